/* select.c - the select(2) backend.
 *
 * select cannot name an fd >= FD_SETSIZE: FD_SET on one writes past the
 * fd_set.  mod() refuses such fds with -ERANGE before touching anything, and
 * the core then refuses the watcher; callers (the server) close the
 * connection instead of leaving it unwatched. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>

#include "loop/loop_int.h"

struct select_state {
    fd_set rd, wr; /* interest */
    fd_set rd_out, wr_out;
    uint32_t gen[FD_SETSIZE];
    uint32_t gen_out[FD_SETSIZE]; /* gens as they were when select was called */
    int maxfd;
};

static int select_init(iop_loop *l)
{
    struct select_state *st = calloc(1, sizeof *st);
    if (!st)
        return -ENOMEM;
    FD_ZERO(&st->rd);
    FD_ZERO(&st->wr);
    st->maxfd = -1;
    l->backend_data = st;
    return 0;
}

static void select_fini(iop_loop *l)
{
    free(l->backend_data);
    l->backend_data = NULL;
}

static int select_mod(iop_loop *l, int fd, uint32_t gen, unsigned oldev, unsigned newev)
{
    struct select_state *st = l->backend_data;
    (void)oldev;
    if (fd < 0)
        return -EBADF;
    if (fd >= FD_SETSIZE)
        return -ERANGE;
    FD_CLR(fd, &st->rd);
    FD_CLR(fd, &st->wr);
    if (newev & IOP_READ)
        FD_SET(fd, &st->rd);
    if (newev & IOP_WRITE)
        FD_SET(fd, &st->wr);
    st->gen[fd] = gen;
    if (newev && fd > st->maxfd)
        st->maxfd = fd;
    /* maxfd only shrinks lazily, in poll: a stale high mark costs a few bits
     * of scanning, never correctness. */
    return 0;
}

static void shrink_maxfd(struct select_state *st)
{
    while (st->maxfd >= 0 && !FD_ISSET(st->maxfd, &st->rd) && !FD_ISSET(st->maxfd, &st->wr))
        st->maxfd--;
}

static int select_poll(iop_loop *l, int timeout_ms)
{
    struct select_state *st = l->backend_data;
    shrink_maxfd(st);
    st->rd_out = st->rd;
    st->wr_out = st->wr;
    struct timeval tv, *tvp = NULL;
    if (timeout_ms >= 0) {
        tv.tv_sec = timeout_ms / 1000;
        tv.tv_usec = (timeout_ms % 1000) * 1000;
        tvp = &tv;
    }
    int nfds = st->maxfd + 1;
    memcpy(st->gen_out, st->gen, (size_t)nfds * sizeof st->gen[0]);
    int k = select(nfds, &st->rd_out, &st->wr_out, NULL, tvp);
    if (timeout_ms != 0)
        iop_loop_update_time(l); /* callbacks start timers from "now" */
    if (k < 0)
        return errno == EINTR ? 0 : -errno;
    for (int fd = 0; fd < nfds && k > 0; fd++) {
        unsigned ev = 0;
        if (FD_ISSET(fd, &st->rd_out))
            ev |= IOP_READ;
        if (FD_ISSET(fd, &st->wr_out))
            ev |= IOP_WRITE;
        if (!ev)
            continue;
        k -= (ev & IOP_READ ? 1 : 0) + (ev & IOP_WRITE ? 1 : 0);
        /* The out sets and gens are snapshots, so callbacks that change the
         * interest cannot confuse this scan, and the core drops reports for
         * watchers stopped (or replaced on the same fd) meanwhile. */
        iop__dispatch(l, fd, st->gen_out[fd], ev);
    }
    return 0;
}

const struct iop_backend iop__backend_select = {
    .name = "select",
    .caps = IOP_CAP_LEVEL,
    .init = select_init,
    .fini = select_fini,
    .mod = select_mod,
    .poll = select_poll,
};

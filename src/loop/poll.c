/* poll.c - the poll(2) backend: level-triggered, no fd limit, O(n) per wait.
 *
 * The pollfd array is kept dense (removal moves the last entry into the
 * hole) with an fd -> index map beside it.  Ready entries are copied out
 * before any callback runs, because callbacks reshape the array. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "loop/loop_int.h"

struct ready {
    int fd;
    uint32_t gen;
    unsigned ev;
};

struct poll_state {
    struct pollfd *pfd;
    uint32_t *gen; /* parallel to pfd */
    int n, cap;
    int *index; /* fd -> position in pfd, -1 when absent */
    int nindex;
    struct ready *ready;
};

static int poll_init(iop_loop *l)
{
    struct poll_state *st = calloc(1, sizeof *st);
    if (!st)
        return -ENOMEM;
    l->backend_data = st;
    return 0;
}

static void poll_fini(iop_loop *l)
{
    struct poll_state *st = l->backend_data;
    free(st->pfd);
    free(st->gen);
    free(st->index);
    free(st->ready);
    free(st);
    l->backend_data = NULL;
}

static int grow_index(struct poll_state *st, int fd)
{
    if (fd < st->nindex)
        return 0;
    int n = st->nindex ? st->nindex : 64;
    while (n <= fd)
        n *= 2;
    int *p = realloc(st->index, (size_t)n * sizeof *p);
    if (!p)
        return -ENOMEM;
    for (int i = st->nindex; i < n; i++)
        p[i] = -1;
    st->index = p;
    st->nindex = n;
    return 0;
}

static int grow_array(struct poll_state *st)
{
    if (st->n < st->cap)
        return 0;
    int cap = st->cap ? st->cap * 2 : 64;
    struct pollfd *pfd = realloc(st->pfd, (size_t)cap * sizeof *pfd);
    if (!pfd)
        return -ENOMEM;
    st->pfd = pfd;
    uint32_t *gen = realloc(st->gen, (size_t)cap * sizeof *gen);
    if (!gen)
        return -ENOMEM;
    st->gen = gen;
    struct ready *r = realloc(st->ready, (size_t)cap * sizeof *r);
    if (!r)
        return -ENOMEM;
    st->ready = r;
    st->cap = cap;
    return 0;
}

static short to_poll(unsigned ev)
{
    return (short)((ev & IOP_READ ? POLLIN : 0) | (ev & IOP_WRITE ? POLLOUT : 0));
}

static void remove_at(struct poll_state *st, int i)
{
    st->index[st->pfd[i].fd] = -1;
    if (--st->n != i) {
        st->pfd[i] = st->pfd[st->n];
        st->gen[i] = st->gen[st->n];
        st->index[st->pfd[i].fd] = i;
    }
}

static int poll_mod(iop_loop *l, int fd, uint32_t gen, unsigned oldev, unsigned newev)
{
    struct poll_state *st = l->backend_data;
    (void)oldev;
    int rc = grow_index(st, fd);
    if (rc < 0)
        return rc;
    int i = st->index[fd];
    if (!newev) {
        if (i >= 0)
            remove_at(st, i);
        return 0;
    }
    if (i < 0) {
        if ((rc = grow_array(st)) < 0)
            return rc;
        i = st->n++;
        st->index[fd] = i;
        st->pfd[i].fd = fd;
    }
    st->pfd[i].events = to_poll(newev);
    st->pfd[i].revents = 0;
    st->gen[i] = gen;
    return 0;
}

static unsigned from_poll(short re)
{
    unsigned ev = 0;
    if (re & (POLLIN | POLLPRI))
        ev |= IOP_READ;
    if (re & POLLOUT)
        ev |= IOP_WRITE;
    if (re & (POLLERR | POLLHUP | POLLNVAL))
        ev |= IOP_READ | IOP_WRITE | IOP_ERROR;
    return ev;
}

static int poll_poll(iop_loop *l, int timeout_ms)
{
    struct poll_state *st = l->backend_data;
    int k = poll(st->pfd, (nfds_t)st->n, timeout_ms);
    if (timeout_ms != 0)
        iop_loop_update_time(l); /* callbacks start timers from "now" */
    if (k < 0)
        return errno == EINTR ? 0 : -errno;
    int nready = 0;
    for (int i = 0; i < st->n && nready < k; i++) {
        if (!st->pfd[i].revents)
            continue;
        st->ready[nready++] =
            (struct ready){st->pfd[i].fd, st->gen[i], from_poll(st->pfd[i].revents)};
        st->pfd[i].revents = 0;
    }
    /* Callbacks may grow the arrays (and move st->ready): index, not pointer. */
    for (int j = 0; j < nready; j++) {
        struct ready r = st->ready[j];
        iop__dispatch(l, r.fd, r.gen, r.ev);
    }
    return 0;
}

const struct iop_backend iop__backend_poll = {
    .name = "poll",
    .caps = IOP_CAP_LEVEL | IOP_CAP_ANY_FD,
    .init = poll_init,
    .fini = poll_fini,
    .mod = poll_mod,
    .poll = poll_poll,
};

/* epoll.c - the epoll backend, level- or edge-triggered per fd.
 *
 * Notes on epoll's quirks that shape this file:
 * - epoll registers the open file description, not the fd number: a closed
 *   fd drops out of the set by itself (if no dup of it lives), so DEL after a
 *   close fails with EBADF/ENOENT, which is not an error here.
 * - The kernel hands back 64 bits per event; we pack (gen, fd) in them, so a
 *   report about a watcher stopped earlier in the same batch is dropped by
 *   the core even if the fd number was reused meanwhile.
 * - Edge-triggered interest is registered once, READ|WRITE together where
 *   the caller asks for both, and never changed while the fd is busy. */
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "loop/loop_int.h"

#define EPOLL_BATCH 512

struct epoll_state {
    int epfd;
    struct epoll_event events[EPOLL_BATCH];
};

static int epoll_init(iop_loop *l)
{
    struct epoll_state *st = malloc(sizeof *st);
    if (!st)
        return -ENOMEM;
    st->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (st->epfd < 0) {
        int rc = -errno;
        free(st);
        return rc;
    }
    l->backend_data = st;
    return 0;
}

static void epoll_fini(iop_loop *l)
{
    struct epoll_state *st = l->backend_data;
    close(st->epfd);
    free(st);
    l->backend_data = NULL;
}

static uint32_t to_epoll(unsigned ev)
{
    uint32_t e = 0;
    if (ev & IOP_READ)
        e |= EPOLLIN | EPOLLRDHUP;
    if (ev & IOP_WRITE)
        e |= EPOLLOUT;
    if (ev & IOP_EDGE)
        e |= EPOLLET;
    return e;
}

static int epoll_mod(iop_loop *l, int fd, uint32_t gen, unsigned oldev, unsigned newev)
{
    struct epoll_state *st = l->backend_data;
    struct epoll_event ev = {.events = to_epoll(newev),
                             .data.u64 = (uint64_t)gen << 32 | (uint32_t)fd};
    int op = !oldev ? EPOLL_CTL_ADD : !newev ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    if (epoll_ctl(st->epfd, op, fd, &ev) == 0)
        return 0;
    int err = errno;
    if (op == EPOLL_CTL_DEL && (err == EBADF || err == ENOENT))
        return 0;
    /* EPERM: regular files and directories cannot be polled by epoll. */
    return -err;
}

static unsigned from_epoll(uint32_t e)
{
    unsigned ev = 0;
    if (e & (EPOLLIN | EPOLLRDHUP | EPOLLPRI))
        ev |= IOP_READ;
    if (e & EPOLLRDHUP)
        ev |= IOP_RDHUP;
    if (e & EPOLLOUT)
        ev |= IOP_WRITE;
    /* An error or hang-up is news to a reader and to a writer alike. */
    if (e & (EPOLLERR | EPOLLHUP))
        ev |= IOP_READ | IOP_WRITE | IOP_ERROR;
    return ev;
}

static int epoll_poll(iop_loop *l, int timeout_ms)
{
    struct epoll_state *st = l->backend_data;
    int n = epoll_wait(st->epfd, st->events, EPOLL_BATCH, timeout_ms);
    if (timeout_ms != 0)
        iop_loop_update_time(l); /* callbacks start timers from "now" */
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        uint64_t u = st->events[i].data.u64;
        iop__dispatch(l, (int)(uint32_t)u, (uint32_t)(u >> 32), from_epoll(st->events[i].events));
    }
    return 0;
}

const struct iop_backend iop__backend_epoll = {
    .name = "epoll",
    .caps = IOP_CAP_LEVEL | IOP_CAP_EDGE | IOP_CAP_ANY_FD,
    .init = epoll_init,
    .fini = epoll_fini,
    .mod = epoll_mod,
    .poll = epoll_poll,
};

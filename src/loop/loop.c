/* loop.c - the loop core: backend choice, fd table, run phases, wakeup. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "loop/loop_int.h"
#include "loop/timer_int.h"

int iop_backend_parse(const char *name)
{
    static const struct {
        const char *name;
        int kind;
    } names[] = {
        {"auto", IOP_BACKEND_AUTO},   {"select", IOP_BACKEND_SELECT},
        {"poll", IOP_BACKEND_POLL},   {"epoll", IOP_BACKEND_EPOLL},
        {"uring", IOP_BACKEND_URING}, {"io_uring", IOP_BACKEND_URING},
    };
    if (!name)
        return -EINVAL;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(name, names[i].name))
            return names[i].kind;
    return -EINVAL;
}

static const struct iop_backend *backend_of(int kind)
{
    switch (kind) {
    case IOP_BACKEND_SELECT:
        return &iop__backend_select;
    case IOP_BACKEND_POLL:
        return &iop__backend_poll;
    case IOP_BACKEND_EPOLL:
        return &iop__backend_epoll;
    case IOP_BACKEND_URING:
        return &iop__backend_uring;
    default:
        return NULL;
    }
}

static void wake_cb(iop_io *w, unsigned revents);

static int loop_start_backend(iop_loop *l, const struct iop_backend *be)
{
    if ((l->flags & IOP_LOOP_EDGE) && !(be->caps & IOP_CAP_EDGE))
        return -ENOTSUP;
    l->be = be;
    int rc = be->init(l);
    if (rc < 0)
        l->be = NULL;
    return rc;
}

static int loop_pick_backend(iop_loop *l, int kind)
{
    if (kind != IOP_BACKEND_AUTO) {
        const struct iop_backend *be = backend_of(kind);
        return be ? loop_start_backend(l, be) : -EINVAL;
    }
    static const int order[] = {IOP_BACKEND_URING, IOP_BACKEND_EPOLL, IOP_BACKEND_POLL};
    int rc = -ENOSYS;
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        rc = loop_start_backend(l, backend_of(order[i]));
        if (rc == 0)
            return 0;
    }
    return rc;
}

int iop_loop_new(int backend, unsigned flags, iop_loop **out)
{
    if (!out || (flags & ~IOP_LOOP_EDGE))
        return -EINVAL;
    iop_loop *l = calloc(1, sizeof *l);
    if (!l)
        return -ENOMEM;
    l->flags = flags;
    l->wakefd = -1;
    iop_loop_update_time(l);
    int rc = loop_pick_backend(l, backend);
    if (rc < 0) {
        free(l);
        return rc;
    }
    l->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->wakefd < 0) {
        rc = -errno;
        goto fail;
    }
    iop_io_init(&l->wake, l->wakefd, wake_cb);
    l->wake.data = l;
    rc = iop_io_start(l, &l->wake, IOP_READ | IOP_LEVEL);
    if (rc < 0)
        goto fail;
    l->nactive--;            /* the loop's own wakeup does not keep it alive */
    iop_loop_update_time(l); /* backend setup can take milliseconds */
    *out = l;
    return 0;
fail:
    if (l->wakefd >= 0)
        close(l->wakefd);
    l->be->fini(l);
    free(l->fds);
    free(l);
    return rc;
}

int iop_loop_free(iop_loop *l)
{
    if (!l)
        return 0;
    if (l->nactive > 0 || l->running)
        return -EBUSY;
    iop_io_stop(&l->wake);
    l->nactive++; /* balance the stop of the uncounted wake watcher */
    iop__signal_free(l);
    l->be->fini(l);
    close(l->wakefd);
    free(l->fds);
    free(l->heap);
    free(l);
    return 0;
}

const char *iop_loop_backend(const iop_loop *l)
{
    return l->be->name;
}

unsigned iop_loop_caps(const iop_loop *l)
{
    return l->be->caps;
}

unsigned iop_loop_flags(const iop_loop *l)
{
    return l->flags;
}

size_t iop_loop_alive(const iop_loop *l)
{
    return l->nactive;
}

uint64_t iop_loop_now(const iop_loop *l)
{
    return l->now;
}

void iop_loop_update_time(iop_loop *l)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    l->now = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- wakeup ------------------------------------------------------------ */

void iop__wake(iop_loop *l)
{
    /* One write per wait is enough: the flag is cleared by the loop thread
     * before it reads the eventfd, so a send racing with that read still
     * writes again. */
    if (atomic_exchange_explicit(&l->wake_pending, 1, memory_order_acq_rel))
        return;
    uint64_t one = 1;
    ssize_t n;
    do
        n = write(l->wakefd, &one, sizeof one);
    while (n < 0 && errno == EINTR);
}

static void async_run(iop_loop *l)
{
    /* The callback may stop a, or the one after it: the cursor lives in the
     * loop so that iop_async_stop() can move it past a stopped handle. */
    for (iop_async *a = l->asyncs; a; a = l->async_next) {
        l->async_next = a->next;
        if (atomic_exchange_explicit(&a->pending, 0, memory_order_acq_rel))
            a->cb(a);
    }
    l->async_next = NULL;
}

static void wake_cb(iop_io *w, unsigned revents)
{
    iop_loop *l = w->data;
    uint64_t v;
    (void)revents;
    atomic_store_explicit(&l->wake_pending, 0, memory_order_release);
    while (read(l->wakefd, &v, sizeof v) < 0 && errno == EINTR)
        ;
    iop__signal_run(l);
    async_run(l);
}

int iop_async_start(iop_loop *l, iop_async *a, iop_async_cb cb)
{
    if (!cb)
        return -EINVAL;
    a->loop = l;
    a->cb = cb;
    atomic_store(&a->pending, 0);
    a->prev = NULL;
    a->next = l->asyncs;
    if (l->asyncs)
        l->asyncs->prev = a;
    l->asyncs = a;
    l->nactive++;
    return 0;
}

int iop_async_send(iop_async *a)
{
    iop_loop *l = a->loop;
    if (!l)
        return -EINVAL;
    if (!atomic_exchange_explicit(&a->pending, 1, memory_order_acq_rel))
        iop__wake(l);
    return 0;
}

void iop_async_stop(iop_async *a)
{
    iop_loop *l = a->loop;
    if (!l)
        return;
    if (l->async_next == a)
        l->async_next = a->next;
    if (a->prev)
        a->prev->next = a->next;
    else
        l->asyncs = a->next;
    if (a->next)
        a->next->prev = a->prev;
    a->next = a->prev = NULL;
    a->loop = NULL;
    l->nactive--;
}

void iop_loop_stop(iop_loop *l)
{
    atomic_store_explicit(&l->stop, 1, memory_order_release);
    iop__wake(l);
}

/* ---- fd watchers ------------------------------------------------------- */

void iop_io_init(iop_io *w, int fd, iop_io_cb cb)
{
    memset(w, 0, sizeof *w);
    w->fd = fd;
    w->cb = cb;
}

static int fds_reserve(iop_loop *l, int fd)
{
    if (fd < l->nfds)
        return 0;
    int n = l->nfds ? l->nfds : 64;
    while (n <= fd)
        n *= 2;
    iop_io **p = realloc(l->fds, (size_t)n * sizeof *p);
    if (!p)
        return -ENOMEM;
    memset(p + l->nfds, 0, (size_t)(n - l->nfds) * sizeof *p);
    l->fds = p;
    l->nfds = n;
    return 0;
}

/* The trigger bits the backend sees: IOP_EDGE or nothing. */
static unsigned io_kernel_events(const iop_loop *l, unsigned events)
{
    unsigned k = events & (IOP_READ | IOP_WRITE);
    if (!k)
        return 0;
    if ((events & IOP_EDGE) || ((l->flags & IOP_LOOP_EDGE) && !(events & IOP_LEVEL)))
        k |= IOP_EDGE;
    return k;
}

int iop_io_start(iop_loop *l, iop_io *w, unsigned events)
{
    if (w->active)
        return -EBUSY;
    if (w->fd < 0 || (events & ~(IOP_READ | IOP_WRITE | IOP_EDGE | IOP_LEVEL)))
        return w->fd < 0 ? -EBADF : -EINVAL;
    int rc = fds_reserve(l, w->fd);
    if (rc < 0)
        return rc;
    if (l->fds[w->fd])
        return -EEXIST;
    unsigned k = io_kernel_events(l, events);
    uint32_t gen = ++l->next_gen;
    if (k) {
        rc = l->be->mod(l, w->fd, gen, 0, k);
        if (rc < 0)
            return rc;
    }
    w->loop = l;
    w->gen = gen;
    w->events = k ? k : (events & IOP_EDGE);
    w->active = 1;
    l->fds[w->fd] = w;
    l->nactive++;
    return 0;
}

int iop_io_modify(iop_io *w, unsigned events)
{
    if (!w->active)
        return -EINVAL;
    if (events & ~(IOP_READ | IOP_WRITE | IOP_EDGE | IOP_LEVEL))
        return -EINVAL;
    iop_loop *l = w->loop;
    unsigned k = io_kernel_events(l, events);
    unsigned old = w->events & (IOP_READ | IOP_WRITE) ? w->events : 0;
    if (k != old) {
        int rc = l->be->mod(l, w->fd, w->gen, old, k);
        if (rc < 0)
            return rc;
    }
    w->events = k;
    return 0;
}

void iop_io_stop(iop_io *w)
{
    if (!w->active)
        return;
    iop_loop *l = w->loop;
    unsigned old = w->events & (IOP_READ | IOP_WRITE) ? w->events : 0;
    if (old)
        (void)l->be->mod(l, w->fd, w->gen, old, 0);
    l->fds[w->fd] = NULL;
    w->active = 0;
    w->events = 0;
    l->nactive--;
}

void iop__dispatch(iop_loop *l, int fd, uint32_t gen, unsigned revents)
{
    if (fd < 0 || fd >= l->nfds)
        return;
    iop_io *w = l->fds[fd];
    /* An earlier callback of this iteration may have stopped this watcher,
     * or stopped it and started another on the same fd number: the gen says
     * whether this report is still about the watcher we have. */
    if (!w || w->gen != gen)
        return;
    unsigned ev = revents & w->events & (IOP_READ | IOP_WRITE);
    if (!ev)
        return;
    w->cb(w, ev | (revents & (IOP_ERROR | IOP_RDHUP)));
}

/* ---- deferred callbacks ------------------------------------------------ */

int iop_defer_start(iop_loop *l, iop_defer *d, iop_defer_cb cb)
{
    if (d->queued && d->loop == l) {
        d->cb = cb;
        return 0;
    }
    d->loop = l;
    d->cb = cb;
    d->queued = 1;
    d->next = NULL;
    d->prev = l->defer_tail;
    if (l->defer_tail)
        l->defer_tail->next = d;
    else
        l->defer_head = d;
    l->defer_tail = d;
    l->nactive++;
    return 0;
}

void iop_defer_cancel(iop_defer *d)
{
    if (!d->queued)
        return;
    iop_loop *l = d->loop;
    if (l->defer_last == d)
        l->defer_last = d->prev; /* the phase now ends one earlier */
    if (d->prev)
        d->prev->next = d->next;
    else
        l->defer_head = d->next;
    if (d->next)
        d->next->prev = d->prev;
    else
        l->defer_tail = d->prev;
    d->queued = 0;
    d->next = d->prev = NULL;
    l->nactive--;
}

static void defer_run(iop_loop *l)
{
    /* Only those queued before this phase began: a callback that queues
     * again runs next iteration, so a defer loop cannot starve the poll.
     * The bound lives in the loop because a callback may cancel the last
     * one; iop_defer_cancel() then moves it back (NULL ends the phase). */
    l->defer_last = l->defer_tail;
    while (l->defer_last) {
        iop_defer *d = l->defer_head;
        iop_defer_cancel(d);
        d->cb(d);
    }
}

/* ---- run --------------------------------------------------------------- */

static int loop_timeout(iop_loop *l, int mode)
{
    /* Nothing active: no event can come, so waiting would hang. */
    if (mode == IOP_RUN_NOWAIT || l->defer_head || l->nactive == 0 ||
        atomic_load_explicit(&l->stop, memory_order_acquire))
        return 0;
    uint64_t due;
    if (!iop__timer_next(l, &due))
        return -1;
    if (due <= l->now)
        return 0;
    uint64_t ms = due - l->now;
    return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

int iop_loop_run(iop_loop *l, int mode)
{
    if (l->running)
        return -EBUSY;
    l->running = 1;
    int rc = 0;
    for (;;) {
        iop_loop_update_time(l);
        iop__timer_run(l);
        defer_run(l);
        if (atomic_exchange_explicit(&l->stop, 0, memory_order_acq_rel))
            break;
        if (mode == IOP_RUN_DEFAULT && l->nactive == 0)
            break;
        rc = l->be->poll(l, loop_timeout(l, mode));
        if (rc < 0)
            break;
        if (mode != IOP_RUN_DEFAULT) {
            iop_loop_update_time(l);
            iop__timer_run(l);
            break;
        }
    }
    l->running = 0;
    if (rc < 0)
        return rc;
    return l->nactive > 0;
}

/* ---- completion operations ---------------------------------------------
 * What every backend would check is checked here once; a backend without
 * completion members gets no request, and the caller -ENOTSUP. */

static int op_submit(iop_loop *l, iop_op *op, iop_op_cb cb, const struct iop__op_req *req)
{
    if (!l->be->op_submit)
        return -ENOTSUP;
    if (!cb)
        return -EINVAL;
    if (op->inflight && op->loop == l)
        return -EBUSY;
    int rc = l->be->op_submit(l, op, req);
    if (rc < 0)
        return rc;
    op->loop = l;
    op->cb = cb;
    op->inflight = 1;
    l->nactive++;
    return 0;
}

int iop_op_accept(iop_loop *l, iop_op *op, int fd, int multishot, iop_op_cb cb)
{
    return op_submit(l, op, cb,
                     &(struct iop__op_req){.kind = IOP__OP_ACCEPT, .fd = fd, .flags = multishot});
}

int iop_op_recv(iop_loop *l, iop_op *op, int fd, void *buf, size_t len, iop_op_cb cb)
{
    return op_submit(l, op, cb,
                     &(struct iop__op_req){.kind = IOP__OP_RECV, .fd = fd, .buf = buf, .len = len});
}

int iop_op_recv_multishot(iop_loop *l, iop_op *op, int fd, iop_bufring *br, iop_op_cb cb)
{
    return op_submit(l, op, cb,
                     &(struct iop__op_req){.kind = IOP__OP_RECV_MULTISHOT, .fd = fd, .br = br});
}

int iop_op_send(iop_loop *l, iop_op *op, int fd, const void *buf, size_t len, int flags,
                iop_op_cb cb)
{
    return op_submit(l, op, cb,
                     &(struct iop__op_req){.kind = IOP__OP_SEND,
                                           .fd = fd,
                                           .buf = (void *)(uintptr_t)buf,
                                           .len = len,
                                           .flags = flags});
}

int iop_op_sendmsg(iop_loop *l, iop_op *op, int fd, const struct msghdr *msg, int flags,
                   iop_op_cb cb)
{
    return op_submit(l, op, cb,
                     &(struct iop__op_req){.kind = IOP__OP_SENDMSG,
                                           .fd = fd,
                                           .msg = (struct msghdr *)(uintptr_t)msg,
                                           .flags = flags});
}

int iop_op_recvmsg(iop_loop *l, iop_op *op, int fd, struct msghdr *msg, int flags, iop_op_cb cb)
{
    return op_submit(
        l, op, cb,
        &(struct iop__op_req){.kind = IOP__OP_RECVMSG, .fd = fd, .msg = msg, .flags = flags});
}

int iop_op_splice(iop_loop *l, iop_op *op, int fd_in, int64_t off_in, int fd_out, int64_t off_out,
                  size_t len, unsigned opflags, iop_op_cb cb)
{
    return op_submit(l, op, cb,
                     &(struct iop__op_req){.kind = IOP__OP_SPLICE,
                                           .fd = fd_in,
                                           .off = off_in,
                                           .fd_out = fd_out,
                                           .off_out = off_out,
                                           .len = len,
                                           .flags = (int)opflags});
}

int iop_op_poll(iop_loop *l, iop_op *op, int fd, unsigned pollmask, iop_op_cb cb)
{
    return op_submit(l, op, cb,
                     &(struct iop__op_req){.kind = IOP__OP_POLL, .fd = fd, .flags = (int)pollmask});
}

int iop_op_close(iop_loop *l, iop_op *op, int fd, iop_op_cb cb)
{
    return op_submit(l, op, cb, &(struct iop__op_req){.kind = IOP__OP_CLOSE, .fd = fd});
}

int iop_op_cancel(iop_op *op)
{
    if (!op->inflight || !op->loop || !op->loop->be->op_cancel)
        return -EINVAL;
    return op->loop->be->op_cancel(op->loop, op);
}

int iop_bufring_new(iop_loop *l, unsigned count, unsigned size, iop_bufring **out)
{
    if (!l->be->bufring_new)
        return -ENOTSUP;
    return l->be->bufring_new(l, count, size, out);
}

/* uring.c - the io_uring backend: readiness as poll requests, plus real
 * completion operations.
 *
 * Every request queued during an iteration reaches the kernel in the one
 * io_uring_submit_and_wait_timeout() call that also waits for completions.
 *
 * fd watchers become poll requests.  Level-triggered interest is a one-shot
 * poll, re-armed after each callback while the interest lasts (the kernel
 * checks readiness when it is armed, so a level that still holds is reported
 * again at once).  Edge-triggered interest is a multishot poll: it stays
 * armed and the kernel posts a completion per wakeup of the fd, which is what
 * epoll's EPOLLET does too.
 *
 * user_data: an iop_op pointer (low 3 bits clear), or a tagged value:
 *   fd << 32 | seq << 3 | TAG_POLL   a poll request; seq tells stale ones
 *   TAG_IGNORE                       cancels and poll removals
 *
 * The ring is created disabled and enabled by the first thread that submits:
 * SINGLE_ISSUER binds the ring to that thread, and a loop may be created on
 * one thread and run on another (server workers do exactly that). */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <liburing.h>

#include "loop/loop_int.h"

#define TAG_POLL   1u
#define TAG_IGNORE 2u
#define SEQ_MASK   0x1fffffffu
#define SQ_ENTRIES 256u
#define CQ_ENTRIES 4096u
#define CQE_BATCH  256

struct upoll {
    uint32_t gen;
    uint32_t seq;
    unsigned want;  /* IOP_READ|IOP_WRITE|IOP_EDGE the core asked for */
    unsigned armed; /* what the request in flight asks */
    int inflight;
};

struct cqe_copy {
    uint64_t ud;
    int32_t res;
    uint32_t flags;
};

struct uring_state {
    struct io_uring ring;
    int enabled;
    int multishot_poll, multishot_accept, multishot_recv;
    struct upoll *polls;
    int npolls;
    int next_bgid;
    struct cqe_copy cqes[CQE_BATCH];
};

struct iop_bufring {
    iop_loop *loop;
    struct io_uring_buf_ring *br;
    unsigned char *mem;
    unsigned count, size, mask;
    int bgid;
};

static int kernel_at_least(int major, int minor)
{
    struct utsname u;
    int ma = 0, mi = 0;
    if (uname(&u) < 0 || sscanf(u.release, "%d.%d", &ma, &mi) != 2)
        return 0;
    return ma > major || (ma == major && mi >= minor);
}

static int ring_setup(struct io_uring *ring)
{
    /* Newest first; each older kernel rejects the flags it lacks with
     * -EINVAL.  DEFER_TASKRUN runs completions only when we ask for them,
     * in our thread, which is what a single-threaded loop wants (6.1+). */
    static const unsigned tries[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        p.flags = tries[i] | IORING_SETUP_CQSIZE;
        p.cq_entries = CQ_ENTRIES;
        rc = io_uring_queue_init_params(SQ_ENTRIES, ring, &p);
        if (rc == 0) {
            /* Waiting with a timeout but without a timeout SQE needs EXT_ARG
             * (5.11); without it we would lose the one-syscall iteration. */
            if (!(p.features & IORING_FEAT_EXT_ARG) || !(p.features & IORING_FEAT_NODROP)) {
                io_uring_queue_exit(ring);
                return -ENOSYS;
            }
            return 0;
        }
        if (rc != -EINVAL)
            return rc; /* EPERM, ENOSYS, ENOMEM: io_uring is not for us */
    }
    return rc;
}

static int uring_init(iop_loop *l)
{
    struct uring_state *st = calloc(1, sizeof *st);
    if (!st)
        return -ENOMEM;
    int rc = ring_setup(&st->ring);
    if (rc < 0) {
        free(st);
        return rc;
    }
    st->enabled = !(st->ring.flags & IORING_SETUP_R_DISABLED);
    st->multishot_poll = kernel_at_least(5, 13);
    st->multishot_accept = kernel_at_least(5, 19);
    st->multishot_recv = kernel_at_least(6, 0);
    l->backend_data = st;
    return 0;
}

static void uring_fini(iop_loop *l)
{
    struct uring_state *st = l->backend_data;
    io_uring_queue_exit(&st->ring);
    free(st->polls);
    free(st);
    l->backend_data = NULL;
}

static int ensure_enabled(struct uring_state *st)
{
    if (st->enabled)
        return 0;
    /* liburing 2.3 declares io_uring_enable_rings() but does not export it. */
    if (syscall(__NR_io_uring_register, st->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) <
        0)
        return -errno;
    st->enabled = 1;
    /* A registered ring fd spares each io_uring_enter an fd lookup (5.18+);
     * like SINGLE_ISSUER it belongs to this thread.  Optional. */
    (void)io_uring_register_ring_fd(&st->ring);
    return 0;
}

/* An SQE, submitting queued ones first if the SQ is full.  need > 1 keeps a
 * linked pair in one submission (a chain cut by a submit is no chain). */
static struct io_uring_sqe *get_sqe(struct uring_state *st, unsigned need)
{
    if (io_uring_sq_space_left(&st->ring) < need) {
        if (ensure_enabled(st) < 0 || io_uring_submit(&st->ring) < 0)
            return NULL;
    }
    return io_uring_get_sqe(&st->ring);
}

/* ---- fd watchers as poll requests -------------------------------------- */

static int polls_reserve(struct uring_state *st, int fd)
{
    if (fd < st->npolls)
        return 0;
    int n = st->npolls ? st->npolls : 64;
    while (n <= fd)
        n *= 2;
    struct upoll *p = realloc(st->polls, (size_t)n * sizeof *p);
    if (!p)
        return -ENOMEM;
    memset(p + st->npolls, 0, (size_t)(n - st->npolls) * sizeof *p);
    st->polls = p;
    st->npolls = n;
    return 0;
}

static uint64_t poll_ud(int fd, uint32_t seq)
{
    return (uint64_t)(uint32_t)fd << 32 | (uint64_t)(seq & SEQ_MASK) << 3 | TAG_POLL;
}

static unsigned poll_mask(unsigned ev)
{
    return (ev & IOP_READ ? POLLIN | POLLRDHUP : 0) | (ev & IOP_WRITE ? POLLOUT : 0);
}

static int poll_arm(struct uring_state *st, int fd)
{
    struct upoll *p = &st->polls[fd];
    struct io_uring_sqe *sqe = get_sqe(st, 1);
    if (!sqe)
        return -EBUSY;
    p->seq = (p->seq + 1) & SEQ_MASK;
    if ((p->want & IOP_EDGE) && st->multishot_poll)
        io_uring_prep_poll_multishot(sqe, fd, poll_mask(p->want));
    else
        io_uring_prep_poll_add(sqe, fd, poll_mask(p->want));
    io_uring_sqe_set_data64(sqe, poll_ud(fd, p->seq));
    p->inflight = 1;
    p->armed = p->want;
    return 0;
}

static int poll_disarm(struct uring_state *st, int fd)
{
    struct upoll *p = &st->polls[fd];
    struct io_uring_sqe *sqe = get_sqe(st, 1);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_poll_remove(sqe, poll_ud(fd, p->seq));
    io_uring_sqe_set_data64(sqe, TAG_IGNORE);
    /* Its completion (and any still in the CQ) carry the old seq: bumping it
     * makes them stale even if the fd is re-armed before they arrive. */
    p->seq = (p->seq + 1) & SEQ_MASK;
    p->inflight = 0;
    return 0;
}

static int uring_mod(iop_loop *l, int fd, uint32_t gen, unsigned oldev, unsigned newev)
{
    struct uring_state *st = l->backend_data;
    (void)oldev;
    if (fd < 0)
        return -EBADF;
    int rc = polls_reserve(st, fd);
    if (rc < 0)
        return rc;
    struct upoll *p = &st->polls[fd];
    if (p->inflight && (p->armed != newev || p->gen != gen)) {
        if ((rc = poll_disarm(st, fd)) < 0)
            return rc;
    }
    p->gen = gen;
    p->want = newev;
    if (newev && !p->inflight)
        return poll_arm(st, fd);
    return 0;
}

static unsigned from_poll(int res)
{
    if (res < 0)
        return IOP_READ | IOP_WRITE | IOP_ERROR;
    unsigned ev = 0;
    if (res & (POLLIN | POLLRDHUP | POLLPRI))
        ev |= IOP_READ;
    if (res & POLLRDHUP)
        ev |= IOP_RDHUP;
    if (res & POLLOUT)
        ev |= IOP_WRITE;
    if (res & (POLLERR | POLLHUP | POLLNVAL))
        ev |= IOP_READ | IOP_WRITE | IOP_ERROR;
    return ev;
}

static void poll_complete(iop_loop *l, const struct cqe_copy *c)
{
    struct uring_state *st = l->backend_data;
    int fd = (int)(c->ud >> 32);
    uint32_t seq = (uint32_t)(c->ud >> 3) & SEQ_MASK;
    if (fd >= st->npolls || st->polls[fd].seq != seq)
        return; /* a request we have since removed or replaced */
    if (!(c->flags & IORING_CQE_F_MORE))
        st->polls[fd].inflight = 0;
    if (c->res != -ECANCELED)
        iop__dispatch(l, fd, st->polls[fd].gen, from_poll(c->res));
    /* The callback may have changed or stopped the watcher, re-armed it, or
     * grown the table: look again. */
    struct upoll *p = &st->polls[fd];
    if (!p->inflight && p->want && c->res != -EBADF)
        (void)poll_arm(st, fd);
}

/* ---- completions ------------------------------------------------------- */

static void op_complete(iop_loop *l, const struct cqe_copy *c)
{
    iop_op *op = (iop_op *)(uintptr_t)c->ud;
    unsigned flags = 0;
    if (c->flags & IORING_CQE_F_MORE) {
        flags |= IOP_OP_MORE;
    } else {
        op->inflight = 0;
        l->nactive--;
    }
    if (c->flags & IORING_CQE_F_BUFFER) {
        flags |= IOP_OP_BUFFER;
        op->buf_id = c->flags >> IORING_CQE_BUFFER_SHIFT;
    }
    op->cb(op, c->res, flags);
}

static int reap(iop_loop *l)
{
    struct uring_state *st = l->backend_data;
    int total = 0;
    for (;;) {
        /* Copy a batch out and release the CQ slots before any callback, so
         * callbacks may queue (and even submit) freely. */
        unsigned head, n = 0;
        struct io_uring_cqe *cqe;
        io_uring_for_each_cqe(&st->ring, head, cqe)
        {
            st->cqes[n++] = (struct cqe_copy){cqe->user_data, cqe->res, cqe->flags};
            if (n == CQE_BATCH)
                break;
        }
        io_uring_cq_advance(&st->ring, n);
        for (unsigned i = 0; i < n; i++) {
            if ((st->cqes[i].ud & 7u) == 0)
                op_complete(l, &st->cqes[i]);
            else if ((st->cqes[i].ud & 7u) == TAG_POLL)
                poll_complete(l, &st->cqes[i]);
        }
        total += (int)n;
        if (n < CQE_BATCH)
            return total;
    }
}

static int uring_poll(iop_loop *l, int timeout_ms)
{
    struct uring_state *st = l->backend_data;
    int rc = ensure_enabled(st);
    if (rc < 0)
        return rc;
    struct __kernel_timespec ts, *tsp = NULL;
    if (timeout_ms >= 0) {
        ts.tv_sec = timeout_ms / 1000;
        ts.tv_nsec = (long long)(timeout_ms % 1000) * 1000000;
        tsp = &ts;
    }
    struct io_uring_cqe *cqe;
    rc = io_uring_submit_and_wait_timeout(&st->ring, &cqe, 1, tsp, NULL);
    if (timeout_ms != 0)
        iop_loop_update_time(l); /* callbacks start timers from "now" */
    /* ETIME: the timeout passed; EINTR: a signal (its handler woke us);
     * EBUSY: the CQ overflowed and the kernel holds the rest for later. */
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN)
        return rc;
    reap(l);
    return 0;
}

/* ---- completion operations ---------------------------------------------
 * loop.c has checked the op (callback, not in flight); here it becomes an
 * SQE, and completions come back through op_complete(). */

static void prep(struct uring_state *st, struct io_uring_sqe *sqe, const struct iop__op_req *r)
{
    switch (r->kind) {
    case IOP__OP_ACCEPT:
        /* Old kernels lack multishot accept; one-shot is the same contract
         * (a completion without IOP_OP_MORE means "arm again"). */
        if (r->flags && st->multishot_accept)
            io_uring_prep_multishot_accept(sqe, r->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        else
            io_uring_prep_accept(sqe, r->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        break;
    case IOP__OP_RECV:
        io_uring_prep_recv(sqe, r->fd, r->buf, r->len, 0);
        break;
    case IOP__OP_RECV_MULTISHOT:
        io_uring_prep_recv_multishot(sqe, r->fd, NULL, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = (uint16_t)r->br->bgid;
        break;
    case IOP__OP_SEND:
        io_uring_prep_send(sqe, r->fd, r->buf, r->len, r->flags | MSG_NOSIGNAL);
        break;
    case IOP__OP_SENDMSG:
        io_uring_prep_sendmsg(sqe, r->fd, r->msg, (unsigned)(r->flags | MSG_NOSIGNAL));
        break;
    case IOP__OP_RECVMSG:
        io_uring_prep_recvmsg(sqe, r->fd, r->msg, (unsigned)r->flags);
        break;
    case IOP__OP_SPLICE:
        io_uring_prep_splice(sqe, r->fd, r->off, r->fd_out, r->off_out,
                             (unsigned)(r->len > UINT32_MAX ? UINT32_MAX : r->len), 0);
        if (r->flags & IOP_OP_LINK)
            sqe->flags |= IOSQE_IO_LINK;
        break;
    case IOP__OP_POLL:
        io_uring_prep_poll_add(sqe, r->fd, (unsigned)r->flags);
        break;
    case IOP__OP_CLOSE:
        io_uring_prep_close(sqe, r->fd);
        break;
    }
}

static int uring_op_submit(iop_loop *l, iop_op *op, const struct iop__op_req *r)
{
    struct uring_state *st = l->backend_data;
    if (r->kind == IOP__OP_RECV_MULTISHOT) {
        if (!st->multishot_recv)
            return -ENOTSUP; /* needs Linux 6.0 */
        if (!r->br || r->br->loop != l)
            return -EINVAL;
    }
    /* A link keeps its pair in one submission (a chain cut by a submit is
     * no chain). */
    int link = r->kind == IOP__OP_SPLICE && (r->flags & IOP_OP_LINK);
    struct io_uring_sqe *sqe = get_sqe(st, link ? 2 : 1);
    if (!sqe)
        return -EBUSY;
    prep(st, sqe, r);
    io_uring_sqe_set_data(sqe, op);
    return 0;
}

static int uring_op_cancel(iop_loop *l, iop_op *op)
{
    struct io_uring_sqe *sqe = get_sqe(l->backend_data, 1);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)op, 0);
    io_uring_sqe_set_data64(sqe, TAG_IGNORE);
    return 0;
}

/* ---- provided buffer rings --------------------------------------------- */

static int uring_bufring_new(iop_loop *l, unsigned count, unsigned size, iop_bufring **out)
{
    if (!count || count > 32768 || (count & (count - 1)) || !size)
        return -EINVAL;
    struct uring_state *st = l->backend_data;
    iop_bufring *b = calloc(1, sizeof *b);
    if (!b)
        return -ENOMEM;
    /* liburing 2.3 has no io_uring_setup_buf_ring(): the ring itself must be
     * page-aligned memory of ours. */
    void *ring = NULL;
    int rc = -posix_memalign(&ring, 4096, count * sizeof(struct io_uring_buf));
    if (rc == 0 && !(b->mem = malloc((size_t)count * size)))
        rc = -ENOMEM;
    if (rc == 0 && (rc = ensure_enabled(st)) == 0) {
        b->br = ring;
        io_uring_buf_ring_init(b->br);
        struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)ring,
                                       .ring_entries = count,
                                       .bgid = (uint16_t)st->next_bgid};
        rc = io_uring_register_buf_ring(&st->ring, &reg, 0);
    }
    if (rc < 0) {
        free(ring);
        free(b->mem);
        free(b);
        return rc;
    }
    b->loop = l;
    b->count = count;
    b->size = size;
    b->mask = (unsigned)io_uring_buf_ring_mask(count);
    b->bgid = st->next_bgid++;
    for (unsigned i = 0; i < count; i++)
        io_uring_buf_ring_add(b->br, b->mem + (size_t)i * size, size, (unsigned short)i,
                              (int)b->mask, (int)i);
    io_uring_buf_ring_advance(b->br, (int)count);
    *out = b;
    return 0;
}

void iop_bufring_free(iop_bufring *b)
{
    if (!b)
        return;
    struct uring_state *st = b->loop->backend_data;
    (void)io_uring_unregister_buf_ring(&st->ring, b->bgid);
    free(b->br);
    free(b->mem);
    free(b);
}

void *iop_bufring_buf(iop_bufring *b, unsigned id)
{
    return id < b->count ? b->mem + (size_t)id * b->size : NULL;
}

unsigned iop_bufring_size(const iop_bufring *b)
{
    return b->size;
}

void iop_bufring_put(iop_bufring *b, unsigned id)
{
    if (id >= b->count)
        return;
    io_uring_buf_ring_add(b->br, b->mem + (size_t)id * b->size, b->size, (unsigned short)id,
                          (int)b->mask, 0);
    io_uring_buf_ring_advance(b->br, 1);
}

const struct iop_backend iop__backend_uring = {
    .name = "uring",
    .caps = IOP_CAP_LEVEL | IOP_CAP_EDGE | IOP_CAP_COMPLETION | IOP_CAP_MULTISHOT | IOP_CAP_ANY_FD,
    .init = uring_init,
    .fini = uring_fini,
    .mod = uring_mod,
    .poll = uring_poll,
    .op_submit = uring_op_submit,
    .op_cancel = uring_op_cancel,
    .bufring_new = uring_bufring_new,
};

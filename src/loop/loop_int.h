/* loop_int.h - what the loop core and its backends share (private).
 *
 * A backend is one file exporting one `const struct iop_backend`.  It only
 * translates: the core tells it which interest an fd should have (mod), and
 * it tells the core which fds are ready (iop__dispatch) from poll().  Its
 * private state lives in loop->backend_data.
 *
 * A completion backend (IOP_CAP_COMPLETION) also fills the op members: the
 * public iop_op_* calls (loop.c) check what every backend would check, then
 * hand the request over as one struct iop__op_req.  Backends without them
 * leave them NULL, and loop.c answers -ENOTSUP.
 */
#ifndef IOP_LOOP_INT_H
#define IOP_LOOP_INT_H

#include <signal.h>
#include <stdint.h>

#include "ioplex/loop.h"

/* One completion request: the arguments of the iop_op_* call named by kind
 * (loop.h documents each).  Members a kind does not use are zero. */
enum iop__op_kind {
    IOP__OP_ACCEPT,         /* fd, flags: multishot */
    IOP__OP_RECV,           /* fd, buf, len */
    IOP__OP_RECV_MULTISHOT, /* fd, br */
    IOP__OP_SEND,           /* fd, buf, len, flags: MSG_* */
    IOP__OP_SENDMSG,        /* fd, msg, flags: MSG_* */
    IOP__OP_RECVMSG,        /* fd, msg, flags: MSG_* */
    IOP__OP_SPLICE,         /* fd, off, fd_out, off_out, len, flags: IOP_OP_LINK */
    IOP__OP_POLL,           /* fd, flags: POLL* mask */
    IOP__OP_CLOSE,          /* fd */
};

struct iop__op_req {
    enum iop__op_kind kind;
    int fd, fd_out;
    int flags;
    void *buf;
    size_t len;
    struct msghdr *msg; /* sendmsg's stays unwritten */
    iop_bufring *br;
    int64_t off, off_out;
};

struct iop_backend {
    const char *name;
    unsigned caps; /* IOP_CAP_* */
    /* 0 or -errno; fills loop->backend_data. */
    int (*init)(iop_loop *loop);
    void (*fini)(iop_loop *loop);
    /* Make the kernel's interest in fd match newev (IOP_READ|IOP_WRITE,
     * maybe IOP_EDGE); oldev is what it was (0: not registered).  gen
     * identifies this watcher of fd so that stale reports can be dropped. */
    int (*mod)(iop_loop *loop, int fd, uint32_t gen, unsigned oldev, unsigned newev);
    /* Wait at most timeout_ms (-1: forever, 0: not at all) and report ready
     * fds with iop__dispatch().  Returns 0 or -errno (EINTR is not an error). */
    int (*poll)(iop_loop *loop, int timeout_ms);

    /* Completion only (NULL elsewhere).  op_submit queues req for op, whose
     * cb, loop and inflight loop.c sets once it returns 0; 0 or -errno
     * (-EBUSY: no room, -ENOTSUP: the kernel lacks that request). */
    int (*op_submit)(iop_loop *loop, iop_op *op, const struct iop__op_req *req);
    /* Cancel op, in flight on loop: 0 or -errno. */
    int (*op_cancel)(iop_loop *loop, iop_op *op);
    /* A provided-buffer ring (iop_bufring_new's contract). */
    int (*bufring_new)(iop_loop *loop, unsigned count, unsigned size, iop_bufring **out);
};

extern const struct iop_backend iop__backend_select;
extern const struct iop_backend iop__backend_poll;
extern const struct iop_backend iop__backend_epoll;
extern const struct iop_backend iop__backend_uring;

struct iop_loop {
    const struct iop_backend *be;
    void *backend_data;
    unsigned flags;
    int running;
    atomic_int stop;
    uint64_t now;
    size_t nactive; /* handles and ops that keep iop_loop_run() going */

    iop_io **fds; /* watcher per fd, NULL when none */
    int nfds;     /* capacity of fds */
    uint32_t next_gen;

    iop_timer **heap; /* min-heap on (due, seq) */
    size_t nheap, heapcap;
    uint64_t timer_seq;

    iop_defer *defer_head, *defer_tail;
    iop_defer *defer_last; /* last of this defer phase, fixed up if cancelled */

    /* The loop's own wakeup: an eventfd watched like any fd.  Async sends
     * and signal handlers write it; reading it runs both. */
    int wakefd;
    iop_io wake;
    atomic_int wake_pending; /* a write is on its way: skip further writes */
    iop_async *asyncs;
    iop_async *async_next; /* walk cursor, fixed up if that one stops */
    iop_signal *signals;
    iop_signal *signal_next; /* walk cursor, fixed up if that one stops */
    uint64_t sig_owned;      /* bit n-1: this loop owns signal n */
};

/* Called by backends for each ready fd.  Drops the report if the watcher
 * was stopped or replaced (gen differs), and limits it to current interest. */
void iop__dispatch(iop_loop *loop, int fd, uint32_t gen, unsigned revents);

/* Write the wakeup eventfd (any thread, async-signal-safe). */
void iop__wake(iop_loop *loop);

/* Signals (signal.c): install/restore handlers, run pending callbacks. */
int iop__signal_own(iop_loop *loop, int signum);
void iop__signal_disown(iop_loop *loop, int signum);
void iop__signal_run(iop_loop *loop);
void iop__signal_free(iop_loop *loop);

#endif

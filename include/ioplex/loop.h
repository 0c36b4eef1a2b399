/* ioplex/loop.h - the event loop.
 *
 * A loop waits for the kernel and runs callbacks on the thread that calls
 * iop_loop_run().  It watches five kinds of things:
 *
 *   iop_io      an fd, for readability and/or writability (level or edge)
 *   iop_timer   a one-shot or repeating timeout, millisecond resolution
 *   iop_signal  a POSIX signal, delivered as an ordinary callback
 *   iop_async   a wakeup that any thread may send
 *   iop_defer   a callback run once, before the loop next waits
 *
 * and, on backends that can (IOP_CAP_COMPLETION: io_uring), completion
 * operations (iop_op: accept, recv, send, splice, close...) where the kernel
 * does the IO and the callback is told the result.
 *
 * Memory: every handle and op struct is the caller's.  The loop keeps a
 * pointer to it while it is active, so it must stay valid and unmoved until
 * stopped (handles) or until its last callback (ops).  Stopping any handle,
 * including the one whose callback is running, is allowed inside a callback;
 * after stop returns the struct may be freed or reused at once.
 *
 * Threads: a loop belongs to the thread that runs it.  Every call here must
 * be made on that thread, except iop_async_send() and iop_loop_stop(), which
 * are safe from any thread (and iop_async_send() from a signal handler).
 *
 * Errors: 0 or a negative errno (see ioplex/common.h).  A call that fails
 * never runs its callback.
 */
#ifndef IOPLEX_LOOP_H
#define IOPLEX_LOOP_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ioplex/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct iop_loop iop_loop;

/* ---- backends --------------------------------------------------------- */

enum iop_backend_kind {
    IOP_BACKEND_AUTO = 0, /* uring if the kernel allows it, else epoll, poll */
    IOP_BACKEND_SELECT,
    IOP_BACKEND_POLL,
    IOP_BACKEND_EPOLL,
    IOP_BACKEND_URING,
};

/* What a backend can do (iop_loop_caps()). */
#define IOP_CAP_LEVEL      0x01u /* level-triggered fd watchers */
#define IOP_CAP_EDGE       0x02u /* edge-triggered fd watchers honoured natively */
#define IOP_CAP_COMPLETION 0x04u /* iop_op_* completion operations */
#define IOP_CAP_MULTISHOT  0x08u /* one request, many completions */
#define IOP_CAP_ANY_FD     0x10u /* no fd limit (select has FD_SETSIZE) */

/* iop_loop_new() flags. */
#define IOP_LOOP_EDGE 0x01u /* fd watchers default to IOP_EDGE; needs IOP_CAP_EDGE */

/* Parse "auto", "select", "poll", "epoll" or "uring" ("io_uring" too).
 * Returns the kind, or -EINVAL. */
int iop_backend_parse(const char *name);

/* Create a loop on the given backend.  AUTO tries uring, then epoll, then
 * poll; the first that starts wins, and errors from the others are not
 * reported.  An explicit backend that cannot start (io_uring refused by
 * seccomp or kernel.io_uring_disabled: -EPERM, -ENOSYS) fails with its
 * error.  IOP_LOOP_EDGE with select or poll fails with -ENOTSUP; with AUTO it
 * skips them.  On success *out is set and 0 returned. */
int iop_loop_new(int backend, unsigned flags, iop_loop **out);

/* Free a loop.  Returns -EBUSY (and frees nothing) while handles are active
 * or ops in flight: stop them, run the loop until their callbacks have come,
 * then free.  NULL is accepted. */
int iop_loop_free(iop_loop *loop);

/* The backend actually chosen: "select", "poll", "epoll" or "uring". */
const char *iop_loop_backend(const iop_loop *loop);
unsigned iop_loop_caps(const iop_loop *loop);
unsigned iop_loop_flags(const iop_loop *loop);

enum iop_run_mode {
    IOP_RUN_DEFAULT = 0, /* until iop_loop_stop() or nothing is active */
    IOP_RUN_ONCE,        /* one iteration; waits for at least one event */
    IOP_RUN_NOWAIT,      /* one iteration; never waits */
    /* ONCE and NOWAIT run due timers again after the wait.  Callbacks an
     * event deferred run at the start of the next run call. */
};

/* Run the loop.  Returns 1 if handles are still active (more to do), 0 if
 * not, or a negative errno if the backend failed.  Not re-entrant: calling it
 * from a callback of the same loop returns -EBUSY. */
int iop_loop_run(iop_loop *loop, int mode);

/* Make iop_loop_run() return after the current iteration.  Safe from any
 * thread; from another thread it wakes the loop.  A stop asked during an
 * ONCE or NOWAIT run (which returns after one iteration anyway) stays
 * pending: the next run call runs due timers and deferred callbacks, then
 * returns without waiting. */
void iop_loop_stop(iop_loop *loop);

/* Milliseconds of CLOCK_MONOTONIC, cached at the start of each iteration
 * and again when a wait that could block returns (so a timer started in a
 * callback counts from when it ran). */
uint64_t iop_loop_now(const iop_loop *loop);
void iop_loop_update_time(iop_loop *loop);

/* Handles and ops that keep the loop alive (active count). */
size_t iop_loop_alive(const iop_loop *loop);

/* ---- fd watchers ------------------------------------------------------ */

#define IOP_READ  0x01u /* readable, or EOF / error pending */
#define IOP_WRITE 0x02u /* writable, or error pending */
#define IOP_EDGE  0x04u /* events: report edges, not levels (see below) */
#define IOP_LEVEL 0x08u /* events: level even on an IOP_LOOP_EDGE loop */
#define IOP_ERROR 0x10u /* revents: the fd has an error or hung up */
#define IOP_RDHUP 0x20u /* revents: the peer shut down its side (epoll, io_uring) */

typedef struct iop_io iop_io;
/* revents: IOP_READ and/or IOP_WRITE, limited to the current interest, plus
 * IOP_ERROR when the kernel reported an error or hang-up (the next read or
 * write tells which), and IOP_RDHUP with IOP_READ when it reported the
 * peer's FIN.  An edge-triggered reader may take a short read for "drained"
 * only when IOP_RDHUP and IOP_ERROR are absent: a FIN queued behind the
 * data would bring no new edge.  select and poll never set IOP_RDHUP. */
typedef void (*iop_io_cb)(iop_io *w, unsigned revents);

struct iop_io {
    void *data; /* public: yours */
    /* read-only */
    int fd;
    unsigned events; /* current interest, IOP_READ|IOP_WRITE|IOP_EDGE */
    /* private */
    iop_loop *loop;
    iop_io_cb cb;
    uint32_t gen;
    int active;
};

/* Prepare a watcher for fd.  No system call; may be called again on an
 * inactive watcher to change fd or callback. */
void iop_io_init(iop_io *w, int fd, iop_io_cb cb);

/* Start watching.  events: IOP_READ and/or IOP_WRITE (0 is allowed: the
 * watcher holds the fd but asks nothing), plus IOP_EDGE or IOP_LEVEL.
 *
 * Edge: the callback is called when the fd becomes ready, and is then not
 * called again for that direction until it has been drained to EAGAIN and
 * becomes ready anew.  A caller asking for IOP_EDGE promises to read/write
 * until EAGAIN.  Backends without IOP_CAP_EDGE (select, poll) keep level
 * semantics, which serve that promise equally well, only with more wakeups.
 *
 * One watcher per fd per loop: -EEXIST if the fd is watched already.
 * -ERANGE on select when fd >= FD_SETSIZE (nothing is touched).
 * -EBADF for a negative or closed fd (epoll, uring).  Already active: -EBUSY. */
int iop_io_start(iop_loop *loop, iop_io *w, unsigned events);

/* Change the interest of an active watcher (same flags as start).
 * Cheap when nothing changes.  -EINVAL if the watcher is not active. */
int iop_io_modify(iop_io *w, unsigned events);

/* Stop watching; no callback for this watcher runs after it returns, even
 * for events the kernel already reported in this iteration.  Stopping an
 * inactive watcher is a no-op.  Stop before you close the fd. */
void iop_io_stop(iop_io *w);

/* ---- timers ----------------------------------------------------------- */

typedef struct iop_timer iop_timer;
typedef void (*iop_timer_cb)(iop_timer *t);

struct iop_timer {
    void *data; /* public */
    /* private */
    iop_loop *loop;
    iop_timer_cb cb;
    uint64_t due;
    uint64_t repeat;
    uint64_t seq;
    size_t slot; /* index in the loop's heap; SIZE_MAX when inactive */
};

/* Prepare a timer.  Must be called once before first use. */
void iop_timer_init(iop_timer *t, iop_timer_cb cb);

/* (Re)start: fire after timeout_ms from iop_loop_now(), then every
 * repeat_ms if repeat_ms > 0.  Restarting an active timer moves it.  Timers
 * due at the same millisecond fire in the order they were started.  A
 * callback that runs late does not make a repeating timer fire twice to
 * catch up.  O(log n). */
int iop_timer_start(iop_loop *loop, iop_timer *t, uint64_t timeout_ms, uint64_t repeat_ms);
void iop_timer_stop(iop_timer *t);
int iop_timer_active(const iop_timer *t);

/* ---- signals ---------------------------------------------------------- */

typedef struct iop_signal iop_signal;
typedef void (*iop_signal_cb)(iop_signal *s, int signum);

struct iop_signal {
    void *data; /* public */
    /* private */
    iop_loop *loop;
    iop_signal_cb cb;
    int signum;
    iop_signal *next;
};

/* Run cb on the loop thread when signum arrives.  Deliveries that arrive
 * before the loop gets to them are merged into one callback.  One loop owns a
 * signal number at a time: another loop asking gets -EBUSY.  Several watchers
 * of one loop may watch the same number.  The previous disposition is
 * restored when the last watcher stops.  -EINVAL for SIGKILL, SIGSTOP or an
 * out-of-range number. */
int iop_signal_start(iop_loop *loop, iop_signal *s, int signum, iop_signal_cb cb);
void iop_signal_stop(iop_signal *s);

/* ---- cross-thread wakeup ---------------------------------------------- */

typedef struct iop_async iop_async;
typedef void (*iop_async_cb)(iop_async *a);

struct iop_async {
    void *data; /* public */
    /* private */
    iop_loop *loop;
    iop_async_cb cb;
    atomic_int pending;
    iop_async *next, *prev;
};

/* Register an async handle with the loop (loop thread). */
int iop_async_start(iop_loop *loop, iop_async *a, iop_async_cb cb);

/* Ask for cb to run on the loop thread.  Any thread, and async-signal-safe.
 * Sends before the callback runs are merged into one call.  Returns 0, or
 * -EINVAL if the handle is not started.  The caller must not race this with
 * iop_async_stop() of the same handle. */
int iop_async_send(iop_async *a);
void iop_async_stop(iop_async *a);

/* ---- deferred callbacks ----------------------------------------------- */

typedef struct iop_defer iop_defer;
typedef void (*iop_defer_cb)(iop_defer *d);

struct iop_defer {
    void *data; /* public */
    /* private */
    iop_loop *loop;
    iop_defer_cb cb;
    iop_defer *next, *prev;
    int queued;
};

/* Run cb once, on this loop's thread, before the loop next waits for events.
 * Queueing an already queued defer is a no-op.  A defer queued from a
 * deferred callback runs in the next iteration (the loop does not wait). */
int iop_defer_start(iop_loop *loop, iop_defer *d, iop_defer_cb cb);
void iop_defer_cancel(iop_defer *d);

/* ---- completion operations (IOP_CAP_COMPLETION) ------------------------
 *
 * Each call queues one request; all requests queued during an iteration
 * reach the kernel in one system call, when the loop next waits.  The
 * callback runs on the loop thread with res = the system call's result
 * (bytes, new fd, or -errno).  IOP_OP_MORE in flags means the request is
 * multishot and stays armed: more callbacks will come.  Without it, this is
 * the op's last callback and the op struct is free again.  On a loop without
 * IOP_CAP_COMPLETION every call returns -ENOTSUP. */

#define IOP_OP_MORE   0x01u /* flags: more completions will come */
#define IOP_OP_BUFFER 0x02u /* flags: data is in provided buffer op->buf_id */
#define IOP_OP_LINK   0x04u /* submit: the next op starts only if this succeeds */

typedef struct iop_op iop_op;
typedef struct iop_bufring iop_bufring;
typedef void (*iop_op_cb)(iop_op *op, int res, unsigned flags);

struct iop_op {
    void *data; /* public */
    /* read-only: the buffer of the last IOP_OP_BUFFER completion */
    unsigned buf_id;
    /* private */
    iop_loop *loop;
    iop_op_cb cb;
    int inflight;
};

/* accept4(fd, NULL, NULL, SOCK_NONBLOCK|SOCK_CLOEXEC); res is the new fd.
 * multishot: one request accepts until cancelled or an error ends it. */
int iop_op_accept(iop_loop *loop, iop_op *op, int fd, int multishot, iop_op_cb cb);

/* recv into buf (stays yours, but must not be touched until the callback). */
int iop_op_recv(iop_loop *loop, iop_op *op, int fd, void *buf, size_t len, iop_op_cb cb);

/* Multishot recv into buffers picked by the kernel from br: each callback
 * has IOP_OP_BUFFER and op->buf_id; read iop_bufring_buf(br, op->buf_id),
 * then give it back with iop_bufring_put().  -ENOBUFS ends the op when every
 * buffer is in use: put some back, then start it again. */
int iop_op_recv_multishot(iop_loop *loop, iop_op *op, int fd, iop_bufring *br, iop_op_cb cb);

/* send / sendmsg (MSG_NOSIGNAL is always added).  msg and what it points to
 * must stay valid until the callback. */
int iop_op_send(iop_loop *loop, iop_op *op, int fd, const void *buf, size_t len, int flags,
                iop_op_cb cb);
struct msghdr;
int iop_op_sendmsg(iop_loop *loop, iop_op *op, int fd, const struct msghdr *msg, int flags,
                   iop_op_cb cb);
int iop_op_recvmsg(iop_loop *loop, iop_op *op, int fd, struct msghdr *msg, int flags, iop_op_cb cb);

/* splice(2): off -1 means "use/advance the fd's position" (pipes and
 * sockets).  opflags IOP_OP_LINK chains the next op queued on this loop
 * after this one (file -> pipe -> socket is the kernel's sendfile). */
int iop_op_splice(iop_loop *loop, iop_op *op, int fd_in, int64_t off_in, int fd_out,
                  int64_t off_out, size_t len, unsigned opflags, iop_op_cb cb);

/* One-shot readiness of fd (POLLIN/POLLOUT bits); res is the revents mask.
 * For the rare transfer that has no op of its own (sendfile(2) into a full
 * socket answers EAGAIN). */
int iop_op_poll(iop_loop *loop, iop_op *op, int fd, unsigned pollmask, iop_op_cb cb);

/* close(fd) done by the kernel. */
int iop_op_close(iop_loop *loop, iop_op *op, int fd, iop_op_cb cb);

/* Ask the kernel to cancel an op in flight.  Its callback still comes, with
 * -ECANCELED or with the result if it had already finished.  -EINVAL if the
 * op is not in flight. */
int iop_op_cancel(iop_op *op);

/* A ring of count (a power of two, <= 32768) buffers of size bytes each
 * that the kernel fills for iop_op_recv_multishot.  Owned by the caller;
 * free it only when no op uses it. */
int iop_bufring_new(iop_loop *loop, unsigned count, unsigned size, iop_bufring **out);
void iop_bufring_free(iop_bufring *br);
void *iop_bufring_buf(iop_bufring *br, unsigned buf_id);
unsigned iop_bufring_size(const iop_bufring *br);
/* Give a buffer back to the kernel. */
void iop_bufring_put(iop_bufring *br, unsigned buf_id);

#ifdef __cplusplus
}
#endif

#endif

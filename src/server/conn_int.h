/* conn_int.h - blocking-style connections (iop_conn), private.
 *
 * One iop_conn serves one connection to a blocking-style handler
 * (verify / setup / handle / finish).  The calls of server.h are written
 * once, in conn.c, on top of three raw operations that each model supplies:
 *
 *   recv   some bytes (at least one), 0 at EOF, or -errno
 *   send   some bytes (at least one), or -errno
 *   wait   until the fd is ready for IOP_READ / IOP_WRITE: 0, -ETIMEDOUT
 *          (idle_timeout_ms without readiness) or -ECANCELED (stop now)
 *
 * Iterative, thread and fork (blocking.c) wait in poll(2) (struct
 * iop__pconn below); the coro model parks the coroutine on its reactor.  conn.c gives recv and
 * send for readiness (a non-blocking syscall, then ops->wait on EAGAIN), so
 * a model that only knows how to wait can use them as they are; one with
 * completion IO (io_uring) supplies its own.
 *
 * Buffering: readline and recv_exact read ahead into a small buffer that
 * later calls (recv included) drain first, so the calls mix freely.
 *
 * Cancellation: a call returns -ECANCELED once the model's stop_now flag is
 * set or a wait said so, and from then on every call of that connection
 * does (c->cancelled), also one that would have found bytes buffered. */
#ifndef IOP_CONN_INT_H
#define IOP_CONN_INT_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "ioplex/server.h"

struct iop__conn_ops {
    ssize_t (*recv)(iop_conn *c, void *buf, size_t len);
    ssize_t (*send)(iop_conn *c, const void *buf, size_t len);
    int (*wait)(iop_conn *c, unsigned events);
};

/* Bytes of the read-ahead buffer (allocated at the first buffered read). */
#define IOP__CONN_RBUF 16384u

struct iop_conn {
    const struct iop__conn_ops *ops;
    iop_server *srv;
    void *data;                 /* iop_conn_data(); starts as cfg.data */
    const atomic_int *stop_now; /* non-zero: the server stops now (NULL: none) */
    int fd;                     /* non-blocking, owned by the model */
    int listener;
    int cancelled;       /* a call has returned -ECANCELED */
    int idle;            /* iop_conn_set_idle: a graceful stop cancels waits */
    int sigpipe;         /* 0: not looked up; 1: ignored; 2: not (conn.c) */
    int drained;         /* the last recv was short: the socket is empty */
    unsigned timeout_ms; /* iop_conn_set_timeout; 0: cfg.idle_timeout_ms */
    char *rbuf;          /* read-ahead: rbuf[rpos..rlen) not yet handed out */
    size_t rpos, rlen;
    iop_tls *tls; /* a TLS listener's connection (conn_tls.c) */
};

/* The timeout of a wait (0: none), and whether a graceful stop ends the
 * waits of this connection now. */
unsigned iop__conn_wait_ms(const iop_conn *c);
int iop__conn_stop_idle(const iop_conn *c);

/* Fill in c for fd (which must be non-blocking).  No allocation. */
void iop__conn_init(iop_conn *c, iop_server *srv, const struct iop__conn_ops *ops, int fd,
                    int listener, const atomic_int *stop_now);
/* Free what init and the calls allocated; does not close fd. */
void iop__conn_fini(iop_conn *c);

/* verify, then setup / handle / finish (finish even if handle ended on an
 * error).  Returns 0 if served, 1 if verify refused the connection. */
int iop__conn_serve(iop_conn *c);

/* The readiness raw ops: recv / send with MSG_DONTWAIT (send also with
 * MSG_NOSIGNAL), ops->wait on EAGAIN. */
ssize_t iop__conn_recv_ready(iop_conn *c, void *buf, size_t len);
ssize_t iop__conn_send_ready(iop_conn *c, const void *buf, size_t len);
/* The recv op of a model that waits well: after a short read (drained)
 * ops->wait first, then iop__conn_recv_ready. */
ssize_t iop__conn_recv_drained(iop_conn *c, void *buf, size_t len);

/* ---- connections served off the loop: waits in poll(2) ---------------------
 *
 * Iterative (inline in the accept callback, with the loop held up), thread
 * and fork connections cannot be reached by the loop while they wait, so a
 * stop reaches them through two eventfds that the model's notify writes
 * (it may run in a signal handler: write(2) is async-signal-safe):
 *
 *   gracefd  the graceful stop began; the wait picks up the deadline
 *            (grace_at), so that an iterative handler, which has the loop
 *            to itself, still ends when the grace runs out
 *   nowfd    stop now: every wait returns -ECANCELED at once
 *
 * Never drained, they stay readable, so every waiting thread sees them, as
 * do fork children (they inherit the fds).
 *
 * Thread connections are made blocking (iop__pconn_set_blocking), and a
 * recv that would find the socket empty sleeps in recv(2) itself, with
 * SO_RCVTIMEO for the timeout: a poll before each recv costs a system call
 * per message, about 15% of the model's throughput.  The other calls keep
 * MSG_DONTWAIT and wait in poll.  Such a sleeper sees neither eventfd, so
 * the model wakes it with shutdown(2): SHUT_RD at a graceful stop if it is
 * waiting idle (iop_conn_set_idle; `parked` says so), SHUT_RDWR on stop
 * now.  An EOF while the server stops is then read as -ECANCELED. */
struct iop__stop_fds {
    atomic_int now;            /* stop now: the conns' stop_now flag */
    _Atomic uint64_t grace_at; /* CLOCK_MONOTONIC ms; 0: not stopping */
    int nowfd, gracefd;
};

/* 0 or -errno.  Closed by iop__stop_fds_close (also after a failed open). */
int iop__stop_fds_open(struct iop__stop_fds *st);
void iop__stop_fds_close(struct iop__stop_fds *st);
/* The server's stopping state became `stopping` (IOP__GRACEFUL / NOW):
 * reach every wait.  Any thread; async-signal-safe. */
void iop__stop_fds_notify(struct iop__stop_fds *st, int stopping, unsigned grace_ms);

struct iop__pconn {
    iop_conn conn; /* first: the iop_conn * handed to the handler is this */
    const struct iop__stop_fds *stop;
    int grace_seen;    /* gracefd was readable: poll it no more */
    int blocking;      /* the socket is blocking (recv sleeps in recv(2)) */
    unsigned rcvtimeo; /* its SO_RCVTIMEO in ms (0: none) */
    atomic_int parked; /* idle and asleep in recv(2): a graceful stop's SHUT_RD */
};

/* Fill in pc for fd (non-blocking), with the poll(2) raw ops. */
void iop__pconn_init(struct iop__pconn *pc, iop_server *srv, int fd, int listener,
                     const struct iop__stop_fds *stop);
/* Thread model, on the connection's thread: make the socket blocking so
 * that a recv sleeps in the kernel (see above).  If it fails, recv waits
 * in poll as in the other models. */
void iop__pconn_set_blocking(struct iop__pconn *pc);

/* ---- TLS (conn_tls.c): the raw ops' bytes are ciphertext --------------
 * serve() runs the handshake first and says goodbye (close_notify) after
 * finish; recv / send / sendfile / shutdown go through the transport. */
int iop__conn_tls_start(iop_conn *c, iop_tls_ctx *ctx);
void iop__conn_tls_end(iop_conn *c);
ssize_t iop__conn_tls_recv(iop_conn *c, void *buf, size_t len);
ssize_t iop__conn_tls_send(iop_conn *c, const void *buf, size_t len);
int iop__conn_tls_sendfile(iop_conn *c, int fd, off_t off, size_t len);
int iop__conn_tls_shutdown(iop_conn *c);

#endif

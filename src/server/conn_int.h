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
 * Iterative, thread and fork (blocking.c) wait in poll(2); a coroutine
 * model parks the coroutine on its reactor instead.  conn.c gives recv and
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

/* ioplex/server.h - the socketserver framework.
 *
 * Python's socketserver, in C: a server owns listeners (TCP, Unix, UDP,
 * mixed) and a handler, and runs the handler under a concurrency model:
 *
 *   IOP_MODEL_EVENT      one reactor (the default): event-style callbacks
 *   IOP_MODEL_ITERATIVE  one client at a time, blocking-style handle()
 *   IOP_MODEL_THREAD     a thread per connection, blocking-style handle()
 *   IOP_MODEL_FORK       a process per connection, blocking-style handle()
 *   IOP_MODEL_CORO       a coroutine per connection on the reactor,
 *                        blocking-style handle() (needs ioplex/coro.h)
 *
 * plus `workers` reactor threads (event, coro), each with its own loop and
 * its own SO_REUSEPORT listener, and `processes` pre-forked worker
 * processes supervised by the parent (restarted when they die, signals
 * forwarded).
 *
 * Two handler styles.  Event style (struct iop_handler's on_* members) runs
 * on the reactor: never block in it.  Blocking style (setup / handle /
 * finish) reads like socketserver's BaseRequestHandler and runs unchanged
 * under iterative, thread, fork and coro, using iop_conn_recv / send /
 * sendall / recv_exact / readline.  Datagram listeners call on_datagram in
 * every model, on the thread that accepts (under iterative, only between
 * connections).  Every model accepts, pauses at max_conns, sheds when out
 * of fds, and stops the same way: see iop_server_run.
 *
 * The library never prints: the caller prints `listening ADDR` lines from
 * iop_server_addr(), and diagnostics come through config.log.
 *
 * Threads: iop_server_new/listen/run/free on one thread;
 * iop_server_shutdown() from any thread or a signal handler.  Handler
 * callbacks run on the thread (or process) serving that connection.
 */
#ifndef IOPLEX_SERVER_H
#define IOPLEX_SERVER_H

#include <limits.h>
#include <stddef.h>
#include <sys/types.h>

#include "ioplex/loop.h"
#include "ioplex/net.h"
#include "ioplex/stream.h"
#include "ioplex/tls.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct iop_server iop_server;
typedef struct iop_conn iop_conn;

/* A received datagram, as on_datagram sees it. */
typedef struct iop_datagram {
    iop_server *server;
    int listener; /* index of the udp: listener */
    const struct sockaddr *from;
    unsigned fromlen;
    iop_dgram *handle; /* private */
} iop_datagram;

/* Send one datagram back to d->from (copied).  0 or -errno. */
int iop_datagram_reply(iop_datagram *d, const void *buf, size_t len);

enum iop_model {
    IOP_MODEL_EVENT = 0,
    IOP_MODEL_ITERATIVE,
    IOP_MODEL_THREAD,
    IOP_MODEL_FORK,
    IOP_MODEL_CORO,
};

/* "event", "iterative", "thread", "fork", "coro" -> IOP_MODEL_*, or -EINVAL. */
int iop_model_parse(const char *name);
const char *iop_model_name(int model);

/* The handler: fill the members of the style your model runs.  Event-style
 * connections are streams (ioplex/stream.h: write with iop_stream_write,
 * close with iop_stream_close, and so on), so an idle one costs only the
 * stream's own ~100 bytes. */
struct iop_handler {
    /* ---- event style (IOP_MODEL_EVENT) ---- */
    /* A connection opened; may write a greeting.  May be NULL. */
    void (*on_open)(iop_stream *s);
    /* Bytes arrived (lent until return).  Required for the event model. */
    void (*on_data)(iop_stream *s, const char *buf, size_t n);
    /* The peer sent EOF.  NULL: the server finishes sending what is queued,
     * then closes. */
    void (*on_eof)(iop_stream *s);
    /* The write queue fell to its low mark after a write said "full". */
    void (*on_drain)(iop_stream *s);
    /* The connection is gone; free what iop_stream_data() points to. */
    void (*on_close)(iop_stream *s);
    /* A graceful stop began.  NULL: iop_stream_end() (finish sending what
     * is queued, then close).  A protocol with requests ends idle
     * connections here and lets the one in flight finish (within grace). */
    void (*on_stop)(iop_stream *s);

    /* ---- blocking style (ITERATIVE, THREAD, FORK, CORO) ---- */
    /* verify_request: non-zero refuses the connection (closed at once). */
    int (*verify)(iop_conn *c);
    void (*setup)(iop_conn *c);
    void (*handle)(iop_conn *c); /* required for the blocking models */
    void (*finish)(iop_conn *c);

    /* ---- datagrams (udp: listeners), every model ---- */
    /* One datagram (lent until return); answer with iop_datagram_reply. */
    void (*on_datagram)(iop_datagram *d, const char *buf, size_t n);

    /* The handler's own state, for its callbacks to find with
     * iop_server_handler_ctx(): a protocol's (proto.h's handlers set it),
     * so that the server's data (cfg.data) stays the user's.  Kept as
     * given; must outlive the server. */
    void *ctx;
};

/* What iop_server_new puts in a member of the config left 0. */
#define IOP_SERVER_DEFAULT_MAX_CONNS  10000u
#define IOP_SERVER_DEFAULT_GRACE_MS   10000u
#define IOP_SERVER_DEFAULT_HIGH_WATER ((size_t)1 << 20)
#define IOP_SERVER_DEFAULT_STACK_SIZE ((size_t)64 << 10)
/* grace_ms: no grace.  A graceful stop still asks every connection to end
 * (on_stop, iop_conn_set_idle waits), then closes what is left at the next
 * loop iteration instead of waiting.  (Any other value is a time, so the
 * longest grace is UINT_MAX - 1 ms.) */
#define IOP_SERVER_GRACE_NONE UINT_MAX

struct iop_server_config {
    int model;                /* IOP_MODEL_*; 0: event */
    int backend;              /* IOP_BACKEND_* of the reactors; 0: auto */
    unsigned loop_flags;      /* IOP_LOOP_EDGE */
    unsigned workers;         /* reactor threads per process (event, coro); 0: 1 */
    unsigned processes;       /* pre-forked worker processes; 0: serve here */
    unsigned max_conns;       /* open connections at most (also threads /
                               * processes); past it, stop accepting; 0:
                               * IOP_SERVER_DEFAULT_MAX_CONNS */
    unsigned idle_timeout_ms; /* close a connection idle that long; 0: never */
    unsigned grace_ms;        /* graceful stop: at most this long; 0:
                               * IOP_SERVER_DEFAULT_GRACE_MS;
                               * IOP_SERVER_GRACE_NONE: none */
    size_t high_water;        /* write queue mark per connection; 0:
                               * IOP_SERVER_DEFAULT_HIGH_WATER */
    size_t stack_size;        /* coro: stack per connection; 0:
                               * IOP_SERVER_DEFAULT_STACK_SIZE */
    const struct iop_handler *handler;
    void *data; /* iop_server_data(), handed to every callback's conn */
    /* Diagnostics (a line, no newline): EMFILE, worker died, ... NULL: silent. */
    void (*log)(void *log_arg, const char *line);
    void *log_arg;
};

/* A server with no listeners yet.  cfg is copied (handler and data are
 * pointers kept as given).  -EINVAL: no handler, the model's required
 * callback (on_data for event, handle for the others) is missing, or
 * workers > 1 with a blocking model. */
int iop_server_new(const struct iop_server_config *cfg, iop_server **out);

/* Bind a listener now (so the caller can report it, and so that a busy
 * port fails before anything runs).  Returns the listener's index, or a
 * negative errno from iop_addr_parse / iop_listen (-EADDRINUSE, ...). */
int iop_server_listen(iop_server *srv, const char *addr);
/* Serve an already bound socket (systemd's LISTEN_FDS, a test's socket);
 * the server owns it from here.  Returns the index. */
int iop_server_adopt(iop_server *srv, int fd);
size_t iop_server_listeners(const iop_server *srv);
/* Listener i speaks TLS with tls (a server context, which must outlive the
 * server): the handshake runs before verify, and the handler's calls read
 * and write plaintext, in every model.  -EINVAL: no such stream listener,
 * or a client context. */
int iop_server_set_tls(iop_server *srv, size_t i, iop_tls_ctx *tls);
/* The real address of listener i (port 0 resolved): the `listening` line. */
int iop_server_addr(const iop_server *srv, size_t i, iop_addr *out);

/* Serve until iop_server_shutdown() (or SIGINT/SIGTERM when the caller has
 * passed them here with iop_server_handle_signals), then stop gracefully:
 * stop accepting (the listening sockets are shut down, so the kernel
 * refuses new clients), ask every connection to end (event: on_stop;
 * blocking style: waits of connections marked iop_conn_set_idle end), let
 * the rest finish within grace_ms, close what is left.  At max_conns open
 * connections accepting pauses until one closes; out of fds (EMFILE) the
 * waiting clients are accepted and closed at once and accepting resumes
 * after a pause; a listening socket that fails otherwise is logged and no
 * longer served.  Returns 0, or a negative errno if serving could not start (-EPERM when
 * io_uring is refused for an explicit uring backend, -ENOTSUP for a model
 * this build lacks...). */
int iop_server_run(iop_server *srv);

/* Graceful stop; a second call stops at once.  Any thread; async-signal-
 * safe. */
void iop_server_shutdown(iop_server *srv);
/* 0 while serving, 1 once a graceful stop began, 2 when stopping now.  Any
 * thread. */
int iop_server_stopping(const iop_server *srv);
/* The model the server runs (IOP_MODEL_*). */
int iop_server_model(const iop_server *srv);

/* SIGINT and SIGTERM stop the server gracefully, a second one at once;
 * worker processes get the signal forwarded.  Call before iop_server_run. */
int iop_server_handle_signals(iop_server *srv);

/* server_close: close listeners (unlinking Unix socket files this server
 * created) and free.  Not while running. */
void iop_server_free(iop_server *srv);
/* cfg.data: the user's; no handler of this library uses it. */
void *iop_server_data(const iop_server *srv);
/* cfg.handler->ctx: the handler's own state. */
void *iop_server_handler_ctx(const iop_server *srv);

/* ---- connections ------------------------------------------------------ */

iop_server *iop_conn_server(const iop_conn *c);
void *iop_conn_data(const iop_conn *c);
void iop_conn_set_data(iop_conn *c, void *data);
int iop_conn_peer(const iop_conn *c, iop_addr *out);
/* The listener's index (iop_server_listen's return). */
int iop_conn_listener(const iop_conn *c);

/* The server and listener of an event-style connection. */
iop_server *iop_stream_server(const iop_stream *s);
int iop_stream_listener(const iop_stream *s);

/* Blocking style: each call blocks the handler (or parks its coroutine)
 * until done.  They return -ETIMEDOUT after idle_timeout_ms without
 * progress, -ECANCELED when the server stops at once.  Reads go through a
 * 16 KiB read-ahead buffer; an error in the middle of a line or of
 * recv_exact loses the bytes already read.  A connection's data starts as
 * the server's (cfg.data).  The socket (iop_conn_fd) is non-blocking and
 * the calls wait in poll(2), which is how a stop reaches a blocked handler;
 * except in the thread model, where it is blocking (SO_RCVTIMEO and
 * SO_SNDTIMEO set) so that a recv sleeps in the kernel without a poll, and
 * a stop reaches it by shutdown(2).  The calls never block in a way a stop
 * cannot end, whatever the fd's mode; a handler's own IO on the fd in the
 * thread model should use MSG_DONTWAIT where it must not sleep.
 * Models: iterative serves udp: listeners only between connections; a fork
 * child inherits every fd of the process (close what it must not hold). */
ssize_t iop_conn_recv(iop_conn *c, void *buf, size_t len);       /* 0: EOF */
ssize_t iop_conn_send(iop_conn *c, const void *buf, size_t len); /* part */
int iop_conn_sendall(iop_conn *c, const void *buf, size_t len);  /* 0 or -errno */
/* Exactly len bytes: len, or 0 on EOF before any, -EPIPE on EOF inside. */
ssize_t iop_conn_recv_exact(iop_conn *c, void *buf, size_t len);
/* A line through '\n' (kept) into buf: its length; 0 on EOF; a last line
 * without '\n' is returned as is; -EMSGSIZE if no '\n' within max bytes
 * (those bytes are consumed); -EINVAL if max is 0. */
ssize_t iop_conn_readline(iop_conn *c, char *buf, size_t max);
/* sendfile(2) of len bytes of fd from off: 0 or -errno. */
int iop_conn_sendfile(iop_conn *c, int fd, off_t off, size_t len);
/* Shut the write side (FIN); reading goes on. */
int iop_conn_shutdown(iop_conn *c);
/* Between requests: while idle is set, a graceful stop ends the
 * connection's waits at once (-ECANCELED) instead of letting them run to
 * the grace limit, so idle keep-alive connections do not delay the exit. */
void iop_conn_set_idle(iop_conn *c, int idle);
/* The timeout of each following wait, in ms (a header deadline, say);
 * 0: the server's idle_timeout_ms again. */
void iop_conn_set_timeout(iop_conn *c, unsigned ms);
int iop_conn_fd(const iop_conn *c);

#ifdef __cplusplus
}
#endif

#endif

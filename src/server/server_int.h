/* server_int.h - what the server core and its models share (private).
 *
 * server.c     the object, listeners, processes (pre-fork + supervision),
 *              shutdown, and the datagram listeners every model serves
 * reactor.c    the worker every model runs on (one per worker thread):
 *              loop, acceptors, max_conns, datagrams, the stop sequence;
 *              a model is an ops table (reactor_int.h)
 * event.c      the event model: a connection is a stream
 * coro_model.c the coro model: a coroutine per connection running the
 *              blocking-style handler
 * blocking.c   iterative, thread and fork: handle() run inline, on a
 *              thread or in a child process
 * conn.c       the blocking iop_conn calls, and the poll(2) waits of
 *              iterative, thread and fork connections
 *
 * While a model runs, srv->notify(srv) is how iop_server_shutdown() (any
 * thread, or a signal handler) reaches it: it must be async-signal-safe
 * (iop_async_send).
 */
#ifndef IOP_SERVER_INT_H
#define IOP_SERVER_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "ioplex/server.h"

struct iop__listener {
    iop_addr addr; /* as bound, real port */
    int kind;      /* IOP_ADDR_TCP / UNIX / UDP */
    /* One socket per (process, worker): fds[p * nworkers + w].  With one of
     * each it is just fds[0].  Extra ones are SO_REUSEPORT siblings bound to
     * the same address before any fork, so that port 0 is one port and a
     * restarted process finds its sockets (and their backlog) waiting. */
    int *fds;
    size_t nfds;
    int unlink_path;  /* a Unix socket file this server created */
    int reuseport;    /* bound with SO_REUSEPORT (siblings may follow) */
    iop_tls_ctx *tls; /* the caller's; NULL: plain */
};

enum { IOP__RUNNING = 0, IOP__GRACEFUL = 1, IOP__NOW = 2 };

struct iop_server {
    struct iop_server_config cfg;
    struct iop__listener *ls;
    size_t nls;
    unsigned nworkers;    /* >= 1 */
    unsigned nprocs;      /* 0: serve in this process */
    int proc;             /* index of this worker process; 0 when nprocs == 0 */
    atomic_int stopping;  /* IOP__* */
    atomic_size_t nconns; /* open connections in this process */
    pid_t *children;      /* parent of worker processes */
    int running;
    /* Set by the running model; called by iop_server_shutdown(), which
     * may run on any thread or in a signal handler.  A model clears it with
     * iop__server_quiesce() before it frees what notify touches. */
    void (*_Atomic notify)(iop_server *srv);
    atomic_int notifying; /* iop_server_shutdown() calls inside notify */
    void *model;          /* the running model's state */
    /* When a TLS handshake failure was last logged (seconds): shared with
     * forked children (iop_server_set_tls maps it), so that the fork model
     * too logs at most one line a second. */
    _Atomic long *tls_log_last;
};

/* Stop notifications reaching the model: clear notify and wait for calls
 * already inside it to return.  Call before freeing the model's state. */
void iop__server_quiesce(iop_server *srv);

/* The fd of listener i for worker w of this process. */
int iop__listener_fd(const iop_server *srv, size_t i, unsigned w);

/* A stop began: shut down worker w's listening sockets, so the kernel
 * refuses new connections (and resets those still in the backlog) instead
 * of holding them unanswered until the process exits. */
void iop__server_refuse(iop_server *srv, unsigned w);

/* Log a line through cfg.log (printf-style). */
/* A failed handshake on fd, logged at most once a second across the
 * server's threads and processes (the event model's too). */
void iop__server_tls_log(iop_server *srv, int fd, const char *why, int rc);
void iop__server_log(const iop_server *srv, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Datagram listeners, served on `loop` by whichever model runs: one
 * iop_dgram per udp: listener for worker w.  Stop closes them; *handles
 * holds nls slots (NULL for stream listeners). */
int iop__server_dgram_start(iop_server *srv, iop_loop *loop, unsigned w, iop_dgram **handles);
void iop__server_dgram_stop(iop_server *srv, iop_dgram **handles);

/* Run fn on each of n worker structs (stride bytes apart): the first on
 * this thread, the others on threads of their own; returns when all have.
 * A worker whose thread cannot start does not run (its loop is then torn
 * down unrun by the caller). */
void iop__server_run_workers(void *workers, size_t stride, unsigned n, void *(*fn)(void *));

#endif

/* reactor_int.h - the worker every model runs on (private).
 *
 * Every model serves with srv->nworkers workers per process, one per
 * thread: worker 0 on the thread that called iop_server_run, the others on
 * threads of their own (iop__server_run_workers; the blocking models have
 * one).  Each worker has
 *
 *   loop      its own, made on the caller's thread before any worker runs,
 *             so that a backend that cannot start fails iop_server_run at
 *             once
 *   acceptor  per stream listener, on this worker's own SO_REUSEPORT socket
 *             (iop__listener_fd): the kernel spreads connections among the
 *             workers.  Paused while the process is at max_conns.
 *   dgram     per udp: listener (iop__server_dgram_start)
 *   wake      an iop_async, the one way other threads reach the worker:
 *             "the server stops" or "a connection closed elsewhere (another
 *             worker, a connection's thread), you may accept again"
 *   grace     a timer: the end of a graceful stop
 *
 * and shares with the other workers only the server: its nconns count and
 * its stopping state.  reactor.c owns all of the above, and is the one
 * place that accepts, pauses at max_conns, refuses a connection it cannot
 * serve, and stops.  A model is a struct iop__reactor_ops: it owns the
 * connections and says what an accepted fd becomes and how it is served
 *
 *   event       an iop_stream with the handler's callbacks   (event.c)
 *   coro        a coroutine on the loop                     (coro_model.c)
 *   iterative   served inline, from the accept callback       (blocking.c)
 *   thread      served on a thread of its own                 (blocking.c)
 *   fork        served in a child process                     (blocking.c)
 *
 * how many are live, and how they are asked to end and made to end.
 *
 * max_conns: srv->nconns counts the open connections of the process.  The
 * core counts each one in after ops->open (pausing this worker's acceptors
 * at the limit); the model counts it out with iop__reactor_conn_closed,
 * which resumes them (and wakes other workers that paused).
 *
 * Threads: iop__reactor_run, ops->init and ops->fini run on the thread
 * that called iop_server_run (before the workers start, after they all
 * returned); ops->notify on any thread or in a signal handler; every other
 * op on the worker's own thread, from its loop or just before / after the
 * loop runs.
 *
 * Stopping, the one sequence: iop_server_shutdown() calls ops->notify and
 * wakes every worker.  A worker's first wake after a stop began stops its
 * acceptors, shuts down its listening sockets (the kernel refuses new
 * clients), stops its datagram handles and calls ops->stop, which asks the
 * connections to end and starts the grace timer.  On stop now, and when
 * grace ends, ops->drop ends them at once.  Once ops->count says none is
 * left, grace and wake stop (and ops->done stops the model's own handles):
 * the loop runs dry and the worker's thread returns. */
#ifndef IOP_REACTOR_INT_H
#define IOP_REACTOR_INT_H

#include <stdint.h>

#include "server/server_int.h"

/* A listener as one worker sees it.  The acceptor's and a stream
 * context's data point here. */
struct iop__reactor_listener {
    iop_acceptor acc; /* unused for udp: listeners */
    struct iop__reactor *r;
    int index;  /* in srv->ls */
    int live;   /* acceptor started and its close_cb not yet run */
    void *data; /* the model's, per listener (event: the stream context) */
};

/* One worker.  A model's worker struct begins with it (ops->worker_size
 * bytes each, zeroed), so that the model can cast back to its own.  Models
 * read srv, index, loop and ls (and own ls[i].data); the rest is the
 * core's. */
struct iop__reactor {
    iop_server *srv;
    const struct iop__reactor_ops *ops;
    unsigned index; /* worker number within the process */
    iop_loop *loop;
    iop_async wake;     /* sent only through iop__reactor_wake */
    atomic_int wake_on; /* wake may be sent to */
    atomic_int sending; /* iop__reactor_wake calls under way */
    iop_timer grace;
    struct iop__reactor_listener *ls; /* per listener */
    iop_dgram **dgrams;               /* per listener (NULL for stream) */
    int paused;                       /* acceptors paused at max_conns */
    int stopping;                     /* this worker has begun its stop */
    uint64_t too_high_logged;         /* select: last log of an fd >= FD_SETSIZE, ms */
    int rc;                           /* first error of this worker */
};

struct iop__reactor_ops {
    size_t worker_size; /* sizeof the model's worker struct */
    /* Connections are watched by the worker's loop (event, coro), so that
     * one select cannot watch (fd >= FD_SETSIZE) is closed at accept. */
    int conns_on_loop;
    /* After the worker's loop and wake are made (NULL: nothing).  On
     * failure fini still runs. */
    int (*init)(struct iop__reactor *r);
    /* A stream listener, before its acceptor starts (NULL: nothing). */
    int (*listen)(struct iop__reactor_listener *li);
    /* An accepted fd (owned from here) becomes a connection: *conn.  On
     * failure the fd is closed and -errno returned (the core logs it).
     * Nothing of the connection runs yet: the core counts it first. */
    int (*open)(struct iop__reactor_listener *li, int fd, void **conn);
    /* Let the connection open gave run (on_open, the coroutine's body). */
    void (*start)(struct iop__reactor *r, void *conn);
    /* Connections of this worker not yet gone. */
    size_t (*count)(const struct iop__reactor *r);
    /* A graceful stop began: ask the connections to end, and start the
     * grace timer with iop__reactor_start_grace where the model's order of
     * steps wants it. */
    void (*stop)(struct iop__reactor *r);
    /* Stop now, or grace is over: end every connection at once.  May be
     * called more than once. */
    void (*drop)(struct iop__reactor *r);
    /* iop_server_shutdown() was called (any thread, async-signal-safe;
     * NULL: nothing): reach connections that the loop cannot, because they
     * run off it or hold it up (iterative).  The worker's wake follows. */
    void (*notify)(struct iop__reactor *r, int stopping);
    /* The worker was woken, before the core looks at the stop and at
     * max_conns (NULL: nothing): collect connections that ended off the
     * loop, and count them out. */
    void (*wake)(struct iop__reactor *r);
    /* Stopping and no connection left: stop the model's own handles so
     * that the loop runs dry (NULL: nothing). */
    void (*done)(struct iop__reactor *r);
    /* After the worker's loop returned, on its thread (NULL: nothing). */
    void (*after_run)(struct iop__reactor *r);
    /* Free the model's part of the worker, before its loop is freed; also
     * for a worker that never ran (its loop may then be NULL). */
    void (*fini)(struct iop__reactor *r);
};

/* The models. */
extern const struct iop__reactor_ops iop__event_ops, iop__coro_ops, iop__iterative_ops,
    iop__thread_ops, iop__fork_ops;

/* Serve srv with the model of ops until it stops: 0, or the first worker's
 * -errno. */
int iop__reactor_run(iop_server *srv, const struct iop__reactor_ops *ops);

/* A connection of r is gone (the model closed it): count it out of
 * max_conns (which may resume paused acceptors) and, while stopping, let
 * the worker finish when it was the last. */
void iop__reactor_conn_closed(struct iop__reactor *r);

/* Wake r (its ops->wake, then the stop and max_conns checks) from any
 * thread or a signal handler; nothing once r has finished. */
void iop__reactor_wake(struct iop__reactor *r);

/* For ops->stop: start the grace timer if connections are left. */
void iop__reactor_start_grace(struct iop__reactor *r);

#endif

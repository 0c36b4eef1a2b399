/* reactor.c - the worker every model runs on: loops, acceptors, max_conns,
 * datagrams and stopping (see reactor_int.h). */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/select.h>
#include <unistd.h>

#include "server/reactor_int.h"

/* srv->model while a reactor model runs. */
struct reactors {
    char *workers; /* n of ops->worker_size bytes */
    size_t size;
    unsigned n;
};

static struct iop__reactor *nth(const struct reactors *m, unsigned w)
{
    return (struct iop__reactor *)(m->workers + (size_t)w * m->size);
}

/* ---- waking ------------------------------------------------------------- */

/* Senders count themselves in, so that wake_stop knows when none can still
 * touch r->wake: iop_async_send must not race iop_async_stop, and a stop
 * notification or another worker's close may come at any time. */
void iop__reactor_wake(struct iop__reactor *r)
{
    atomic_fetch_add(&r->sending, 1);
    if (atomic_load(&r->wake_on))
        iop_async_send(&r->wake);
    atomic_fetch_sub(&r->sending, 1);
}

/* On r's thread.  A sender interrupted there by a signal handler has
 * returned before this runs on; others never block. */
static void wake_stop(struct iop__reactor *r)
{
    atomic_store(&r->wake_on, 0);
    while (atomic_load(&r->sending) > 0)
        sched_yield();
    iop_async_stop(&r->wake);
}

/* ---- max_conns ---------------------------------------------------------- */

static void acceptors_pause(struct iop__reactor *r, int pause)
{
    if (r->paused == pause || r->stopping)
        return;
    r->paused = pause;
    for (size_t i = 0; i < r->srv->nls; i++)
        if (r->ls[i].live)
            (void)(pause ? iop_acceptor_pause(&r->ls[i].acc) : iop_acceptor_resume(&r->ls[i].acc));
}

/* A connection closed somewhere in this process: paused workers may go on.
 * Other workers' loops are woken (rare: only at the limit). */
static void conns_fell(struct iop__reactor *r)
{
    struct reactors *m = r->srv->model;
    acceptors_pause(r, 0);
    for (unsigned w = 0; w < m->n; w++)
        if (nth(m, w) != r && nth(m, w)->paused)
            iop__reactor_wake(nth(m, w));
}

/* ---- accepting ---------------------------------------------------------- */

static int fd_too_high(struct iop__reactor *r, int fd)
{
    if (!r->ops->conns_on_loop || (iop_loop_caps(r->loop) & IOP_CAP_ANY_FD) || fd < FD_SETSIZE)
        return 0;
    /* select cannot watch it: the connection is closed rather than left
     * hanging, and that is said at most once a second. */
    uint64_t now = iop_loop_now(r->loop);
    if (!r->too_high_logged || now - r->too_high_logged >= 1000) {
        r->too_high_logged = now;
        iop__server_log(r->srv, "select: fd %d >= FD_SETSIZE (%d): connection closed", fd,
                        FD_SETSIZE);
    }
    return 1;
}

static void on_accept(iop_acceptor *acc, int fd)
{
    struct iop__reactor_listener *li = acc->data;
    struct iop__reactor *r = li->r;
    iop_server *srv = r->srv;
    /* Stopping: worker_stop stops the acceptors and none calls back after
     * that, but the stop may have begun inside this batch of accepts (an
     * iterative handler holds the loop up until its wake), and a
     * connection must never start on a worker that may be done. */
    if (r->stopping || atomic_load(&srv->stopping) != IOP__RUNNING || fd_too_high(r, fd)) {
        close(fd);
        return;
    }
    void *conn;
    int rc = r->ops->open(li, fd, &conn);
    if (rc < 0) {
        iop__server_log(srv, "connection refused: %s", iop_strerror(rc));
        return;
    }
    /* Counted before any of its code runs, which may already close it. */
    if (atomic_fetch_add(&srv->nconns, 1) + 1 >= srv->cfg.max_conns)
        acceptors_pause(r, 1);
    r->ops->start(r, conn);
}

static void acceptor_closed(iop_acceptor *acc)
{
    struct iop__reactor_listener *li = acc->data;
    li->live = 0;
}

/* Out of resources, the acceptor sheds and retries by itself; any other
 * error means the listening socket is broken and accepts nothing more: it
 * is stopped (its close_cb follows), the other listeners go on.  While the
 * server stops that is expected and not said: a socket shared by workers
 * (Unix) is shut down by the first worker that stops. */
static void on_accept_error(iop_acceptor *acc, int err)
{
    struct iop__reactor_listener *li = acc->data;
    int resource = err == -EMFILE || err == -ENFILE || err == -ENOBUFS || err == -ENOMEM;
    if (atomic_load(&li->r->srv->stopping) != IOP__RUNNING) {
        iop_acceptor_stop(acc, acceptor_closed);
        return;
    }
    iop__server_log(li->r->srv, "accept on listener %d: %s%s", li->index, iop_strerror(err),
                    err == -EMFILE || err == -ENFILE ? " (shedding connections)"
                    : resource                       ? ""
                                                     : " (listener stopped)");
    if (!resource)
        iop_acceptor_stop(acc, acceptor_closed);
}

/* ---- stopping ----------------------------------------------------------- */

/* Stopping and nothing left: let the loop run dry. */
static void check_done(struct iop__reactor *r)
{
    if (r->ops->count(r) > 0)
        return;
    iop_timer_stop(&r->grace);
    wake_stop(r);
    if (r->ops->done)
        r->ops->done(r);
}

void iop__reactor_conn_closed(struct iop__reactor *r)
{
    iop_server *srv = r->srv;
    size_t before = atomic_fetch_sub(&srv->nconns, 1);
    if (before >= srv->cfg.max_conns)
        conns_fell(r);
    if (r->stopping)
        check_done(r);
}

void iop__reactor_start_grace(struct iop__reactor *r)
{
    if (r->ops->count(r) > 0)
        (void)iop_timer_start(r->loop, &r->grace, r->srv->cfg.grace_ms, 0);
}

static void grace_over(iop_timer *t)
{
    struct iop__reactor *r = t->data;
    r->ops->drop(r);
}

/* The first call stops taking work; `now` (on any call) ends what is left. */
static void worker_stop(struct iop__reactor *r, int now)
{
    iop_server *srv = r->srv;
    if (!r->stopping) {
        r->stopping = 1;
        for (size_t i = 0; i < srv->nls; i++)
            if (r->ls[i].live)
                iop_acceptor_stop(&r->ls[i].acc, acceptor_closed);
        iop__server_refuse(srv, r->index);
        iop__server_dgram_stop(srv, r->dgrams);
        r->ops->stop(r);
    }
    if (now)
        r->ops->drop(r);
    check_done(r);
}

static void wake_cb(iop_async *a)
{
    struct iop__reactor *r = a->data;
    if (r->ops->wake)
        r->ops->wake(r);
    int stopping = atomic_load(&r->srv->stopping);
    if (stopping)
        worker_stop(r, stopping >= IOP__NOW);
    else if (r->paused && atomic_load(&r->srv->nconns) < r->srv->cfg.max_conns)
        acceptors_pause(r, 0);
}

/* ---- a worker ----------------------------------------------------------- */

static int worker_listen(struct iop__reactor *r)
{
    iop_server *srv = r->srv;
    for (size_t i = 0; i < srv->nls; i++) {
        struct iop__reactor_listener *li = &r->ls[i];
        li->r = r;
        li->index = (int)i;
        if (srv->ls[i].kind == IOP_ADDR_UDP)
            continue;
        int rc = r->ops->listen ? r->ops->listen(li) : 0;
        if (rc < 0)
            return rc;
        li->acc.data = li;
        rc = iop_acceptor_start(r->loop, &li->acc, iop__listener_fd(srv, i, r->index), on_accept,
                                on_accept_error);
        if (rc < 0)
            return rc;
        li->live = 1;
    }
    return iop__server_dgram_start(srv, r->loop, r->index, r->dgrams);
}

/* The worker's thread: listen, serve until the loop runs dry. */
static void *worker_main(void *arg)
{
    struct iop__reactor *r = arg;
    int rc = worker_listen(r);
    if (rc < 0) {
        iop__server_log(r->srv, "worker %u: %s", r->index, iop_strerror(rc));
        r->rc = rc;
        worker_stop(r, 1);
    } else if (atomic_load(&r->srv->stopping)) {
        worker_stop(r, atomic_load(&r->srv->stopping) >= IOP__NOW);
    }
    rc = iop_loop_run(r->loop, IOP_RUN_DEFAULT);
    if (rc < 0 && !r->rc)
        r->rc = rc;
    if (r->ops->after_run)
        r->ops->after_run(r);
    return NULL;
}

static int worker_init(iop_server *srv, const struct iop__reactor_ops *ops, struct iop__reactor *r,
                       unsigned index)
{
    r->srv = srv;
    r->ops = ops;
    r->index = index;
    r->ls = calloc(srv->nls, sizeof *r->ls);
    r->dgrams = calloc(srv->nls, sizeof *r->dgrams);
    if (!r->ls || !r->dgrams)
        return -ENOMEM;
    /* Loops are made here, on the caller's thread, so that a backend that
     * cannot start (io_uring refused) fails iop_server_run at once. */
    int rc = iop_loop_new(srv->cfg.backend, srv->cfg.loop_flags, &r->loop);
    if (rc < 0)
        return rc;
    iop_timer_init(&r->grace, grace_over);
    r->grace.data = r;
    r->wake.data = r;
    if ((rc = iop_async_start(r->loop, &r->wake, wake_cb)) < 0)
        return rc;
    atomic_store(&r->wake_on, 1);
    return ops->init ? ops->init(r) : 0;
}

/* Also for a worker that never ran, or whose init failed part way or never
 * began (all zero then). */
static void worker_teardown(struct iop__reactor *r)
{
    if (r->loop && r->wake.loop)
        iop_async_stop(&r->wake);
    if (r->ls)
        r->ops->fini(r);
    if (r->loop && iop_loop_free(r->loop) < 0)
        iop__server_log(r->srv, "worker %u: loop still busy at exit", r->index);
    free(r->ls);
    free(r->dgrams);
}

/* srv->notify: any thread, or a signal handler. */
static void notify_workers(iop_server *srv)
{
    struct reactors *m = srv->model;
    int stopping = atomic_load(&srv->stopping);
    for (unsigned w = 0; w < m->n; w++) {
        struct iop__reactor *r = nth(m, w);
        if (r->ops->notify && stopping)
            r->ops->notify(r, stopping);
        iop__reactor_wake(r);
    }
}

int iop__reactor_run(iop_server *srv, const struct iop__reactor_ops *ops)
{
    struct reactors m = {calloc(srv->nworkers, ops->worker_size), ops->worker_size, srv->nworkers};
    if (!m.workers)
        return -ENOMEM;
    int rc = 0;
    for (unsigned w = 0; w < m.n && rc == 0; w++)
        rc = worker_init(srv, ops, nth(&m, w), w);
    if (rc == 0) {
        srv->model = &m;
        srv->notify = notify_workers;
        if (atomic_load(&srv->stopping))
            notify_workers(srv);
        iop__server_run_workers(m.workers, m.size, m.n, worker_main);
        iop__server_quiesce(srv);
        srv->model = NULL;
        for (unsigned w = 0; w < m.n && rc == 0; w++)
            rc = nth(&m, w)->rc;
    }
    for (unsigned w = 0; w < m.n; w++)
        worker_teardown(nth(&m, w));
    free(m.workers);
    return rc;
}

/* coro_model.c - the coro model: a coroutine per connection on a reactor.
 *
 * Like the event model (event.c), each worker thread has its own loop, its
 * own SO_REUSEPORT sockets, an acceptor per stream listener and a datagram
 * handle per udp: listener.  Each accepted connection gets an iop_coro that
 * runs the blocking-style handler (verify / setup / handle / finish) over
 * an iop_conn whose raw ops are conn.c's readiness ones; its `wait` parks
 * the coroutine:
 *
 *   an iop_io watcher on the fd (level-triggered, also on an edge loop; on
 *   io_uring it is a poll request rather than completion IO) and an
 *   iop_timer for idle_timeout_ms, then iop_coro_yield.  The watcher and
 *   timer callbacks resume it with 0 or -ETIMEDOUT.
 *
 * Coroutines are resumed only from loop callbacks (accept, io, timer,
 * async, grace timer), never from inside a coroutine.  A coroutine whose
 * body returned has its fd closed at once; the coroutine itself is freed
 * by a defer (or at teardown), outside its own stack.
 *
 * Stopping: iop_server_shutdown() wakes every worker (iop_async).  A worker
 * stops its acceptors and datagram handles and lets its coroutines finish
 * for at most grace_ms; then (or at once on stop now) it sets its stop_now
 * flag and resumes every parked coroutine with -ECANCELED.  When none is
 * left its loop runs dry and the thread returns. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include "ioplex/coro.h"
#include "server/conn_int.h"
#include "server/server_int.h"

struct cw;

struct cw_listener {
    iop_acceptor acc;
    struct cw *wk;
    int index;
    int live; /* started and its close_cb not yet run */
};

struct cconn {
    iop_conn conn; /* first: the iop_conn * handed to the handler is this */
    struct cw *wk;
    iop_coro *co;
    iop_io io;
    iop_timer idle;
    iop_defer reap;
    struct cconn *prev, *next; /* wk->conns */
    int parked;                /* in co_wait, yielded to the loop */
    int done;                  /* body returned: fd closed, waiting for reap */
    int drained;               /* the last recv was short: the socket is empty */
};

struct cw {
    iop_server *srv;
    unsigned index;
    iop_loop *loop;
    iop_async wake;
    iop_timer grace;
    struct cw_listener *ls; /* per listener (unused for udp) */
    iop_dgram **dgrams;     /* per listener (NULL for stream) */
    struct cconn *conns;    /* every cconn not yet freed */
    size_t live;            /* of them, not done */
    atomic_int now;         /* the conns' stop_now flag */
    int paused, stopping, now_done;
    uint64_t too_high_logged;
    int rc;
};

struct cmodel {
    struct cw *workers;
    unsigned n;
};

static void worker_check_done(struct cw *wk);

/* ---- max_conns ---------------------------------------------------------- */

static void acceptors_pause(struct cw *wk, int pause)
{
    if (wk->paused == pause || wk->stopping)
        return;
    wk->paused = pause;
    for (size_t i = 0; i < wk->srv->nls; i++)
        if (wk->ls[i].live)
            (void)(pause ? iop_acceptor_pause(&wk->ls[i].acc)
                         : iop_acceptor_resume(&wk->ls[i].acc));
}

static void conns_fell(struct cw *wk)
{
    struct cmodel *m = wk->srv->model;
    acceptors_pause(wk, 0);
    for (unsigned w = 0; w < m->n; w++)
        if (&m->workers[w] != wk && m->workers[w].paused)
            iop_async_send(&m->workers[w].wake);
}

/* ---- connections --------------------------------------------------------- */

static void cconn_free(struct cconn *cc)
{
    struct cw *wk = cc->wk;
    if (cc->prev)
        cc->prev->next = cc->next;
    else
        wk->conns = cc->next;
    if (cc->next)
        cc->next->prev = cc->prev;
    iop_defer_cancel(&cc->reap);
    iop_coro_free(cc->co);
    iop__conn_fini(&cc->conn);
    free(cc);
}

static void reap_cb(iop_defer *d)
{
    cconn_free(d->data);
}

/* The body returned (loop stack): close, count down, free later. */
static void conn_finished(struct cconn *cc)
{
    struct cw *wk = cc->wk;
    iop_server *srv = wk->srv;
    cc->done = 1;
    iop_io_stop(&cc->io);
    close(cc->conn.fd);
    wk->live--;
    if (iop_defer_start(wk->loop, &cc->reap, reap_cb) < 0)
        cconn_free(cc); /* safe: we are not on its stack */
    size_t before = atomic_fetch_sub(&srv->nconns, 1);
    if (before >= srv->cfg.max_conns)
        conns_fell(wk);
    if (wk->stopping)
        worker_check_done(wk);
}

/* Resume cc (from a loop callback only) with rc as its wait's result. */
static void conn_resume(struct cconn *cc, int rc)
{
    if (!cc->parked)
        return;
    cc->parked = 0;
    iop_timer_stop(&cc->idle);
    int r = iop_coro_resume(cc->co, (void *)(intptr_t)rc, NULL);
    if (r == 1)
        conn_finished(cc);
}

static void io_cb(iop_io *w, unsigned revents)
{
    (void)revents;
    conn_resume(w->data, 0); /* ready, or an error the next call will tell */
}

static void idle_cb(iop_timer *t)
{
    conn_resume(t->data, -ETIMEDOUT);
}

static int co_wait(iop_conn *c, unsigned events)
{
    struct cconn *cc = (struct cconn *)c;
    struct cw *wk = cc->wk;
    if (c->cancelled || atomic_load(&wk->now) || iop__conn_stop_idle(c)) {
        c->cancelled = 1;
        return -ECANCELED;
    }
    /* The watcher lives as long as the connection and only changes its
     * interest: a wait costs no system call on epoll.  Its reports while
     * the coroutine is not parked are ignored (conn_resume). */
    unsigned want = events & (IOP_READ | IOP_WRITE);
    int rc = 0;
    if (!cc->io.active) {
        iop_io_init(&cc->io, c->fd, io_cb);
        cc->io.data = cc;
        rc = iop_io_start(wk->loop, &cc->io, want | IOP_LEVEL);
    } else if ((cc->io.events & (IOP_READ | IOP_WRITE)) != want) {
        rc = iop_io_modify(&cc->io, want | IOP_LEVEL);
    }
    if (rc < 0)
        return rc;
    unsigned idle = iop__conn_wait_ms(c);
    if (idle && (rc = iop_timer_start(wk->loop, &cc->idle, idle, 0)) < 0)
        return rc;
    cc->parked = 1;
    void *in = NULL;
    rc = iop_coro_yield(NULL, &in);
    if (rc < 0) { /* not in a coroutine: cannot happen */
        cc->parked = 0;
        iop_timer_stop(&cc->idle);
        return rc;
    }
    rc = (int)(intptr_t)in;
    if (rc == -ECANCELED)
        c->cancelled = 1;
    return rc;
}

/* After a short read the socket is almost surely empty: park first instead
 * of paying for a recv that says EAGAIN.  If bytes did come meanwhile, the
 * level-triggered watcher reports them at once. */
static ssize_t co_recv(iop_conn *c, void *buf, size_t len)
{
    struct cconn *cc = (struct cconn *)c;
    if (cc->drained) {
        int rc = co_wait(c, IOP_READ);
        if (rc < 0)
            return rc;
    }
    ssize_t n = iop__conn_recv_ready(c, buf, len);
    cc->drained = n > 0 && (size_t)n < len;
    return n;
}

static const struct iop__conn_ops co_ops = {
    .recv = co_recv,
    .send = iop__conn_send_ready,
    .wait = co_wait,
};

static void *conn_body(iop_coro *co, void *arg)
{
    (void)co;
    struct cconn *cc = arg;
    iop__conn_serve(&cc->conn);
    return NULL;
}

static void too_high(struct cw *wk, int fd)
{
    uint64_t now = iop_loop_now(wk->loop);
    if (!wk->too_high_logged || now - wk->too_high_logged >= 1000) {
        wk->too_high_logged = now;
        iop__server_log(wk->srv, "select: fd %d >= FD_SETSIZE (%d): connection closed", fd,
                        FD_SETSIZE);
    }
}

static void on_accept(iop_acceptor *acc, int fd)
{
    struct cw_listener *li = acc->data;
    struct cw *wk = li->wk;
    iop_server *srv = wk->srv;
    if (wk->stopping) {
        close(fd);
        return;
    }
    if (!(iop_loop_caps(wk->loop) & IOP_CAP_ANY_FD) && fd >= FD_SETSIZE) {
        too_high(wk, fd);
        close(fd);
        return;
    }
    struct cconn *cc = calloc(1, sizeof *cc);
    int rc = cc ? iop_coro_new(&cc->co, conn_body, cc, srv->cfg.stack_size) : -ENOMEM;
    if (rc < 0) {
        iop__server_log(srv, "connection refused: %s", iop_strerror(rc));
        free(cc);
        close(fd);
        return;
    }
    iop__conn_init(&cc->conn, srv, &co_ops, fd, li->index, &wk->now);
    cc->wk = wk;
    iop_timer_init(&cc->idle, idle_cb);
    cc->idle.data = cc;
    cc->reap.data = cc;
    cc->next = wk->conns;
    if (wk->conns)
        wk->conns->prev = cc;
    wk->conns = cc;
    wk->live++;
    if (atomic_fetch_add(&srv->nconns, 1) + 1 >= srv->cfg.max_conns)
        acceptors_pause(wk, 1);
    if (iop_coro_resume(cc->co, NULL, NULL) == 1)
        conn_finished(cc);
}

static void on_accept_error(iop_acceptor *acc, int err)
{
    struct cw_listener *li = acc->data;
    iop__server_log(li->wk->srv, "accept on listener %d: %s%s", li->index, iop_strerror(err),
                    err == -EMFILE || err == -ENFILE ? " (shedding connections)" : "");
}

/* ---- a worker ------------------------------------------------------------- */

static void acceptor_closed(iop_acceptor *acc)
{
    struct cw_listener *li = acc->data;
    li->live = 0;
}

/* Stopping and nothing left: let the loop run dry. */
static void worker_check_done(struct cw *wk)
{
    if (wk->live > 0)
        return;
    iop_timer_stop(&wk->grace);
    iop_async_stop(&wk->wake);
}

/* Every parked coroutine gets -ECANCELED (loop callbacks only). */
static void cancel_all(struct cw *wk)
{
    wk->now_done = 1;
    atomic_store(&wk->now, 1);
    /* Resuming never unlinks (reaping is deferred): the list holds still. */
    for (struct cconn *cc = wk->conns; cc; cc = cc->next)
        if (!cc->done)
            conn_resume(cc, -ECANCELED);
}

static void grace_over(iop_timer *t)
{
    cancel_all(t->data);
}

static void worker_stop(struct cw *wk, int now)
{
    iop_server *srv = wk->srv;
    if (!wk->stopping) {
        wk->stopping = 1;
        for (size_t i = 0; i < srv->nls; i++)
            if (wk->ls[i].live)
                iop_acceptor_stop(&wk->ls[i].acc, acceptor_closed);
        iop__server_refuse(srv, wk->index);
        iop__server_dgram_stop(srv, wk->dgrams);
        if (wk->live > 0)
            (void)iop_timer_start(wk->loop, &wk->grace, srv->cfg.grace_ms, 0);
        /* Connections idle between requests end now, not at the grace
         * limit. */
        for (struct cconn *cc = wk->conns; cc; cc = cc->next)
            if (!cc->done && cc->conn.idle)
                conn_resume(cc, -ECANCELED);
    }
    if (now && !wk->now_done)
        cancel_all(wk);
    worker_check_done(wk);
}

static void wake_cb(iop_async *a)
{
    struct cw *wk = a->data;
    int stopping = atomic_load(&wk->srv->stopping);
    if (stopping)
        worker_stop(wk, stopping >= IOP__NOW);
    else if (wk->paused && atomic_load(&wk->srv->nconns) < wk->srv->cfg.max_conns)
        acceptors_pause(wk, 0);
}

static int worker_listen(struct cw *wk)
{
    iop_server *srv = wk->srv;
    for (size_t i = 0; i < srv->nls; i++) {
        struct cw_listener *li = &wk->ls[i];
        li->wk = wk;
        li->index = (int)i;
        if (srv->ls[i].kind == IOP_ADDR_UDP)
            continue;
        li->acc.data = li;
        int rc = iop_acceptor_start(wk->loop, &li->acc, iop__listener_fd(srv, i, wk->index),
                                    on_accept, on_accept_error);
        if (rc < 0)
            return rc;
        li->live = 1;
    }
    return iop__server_dgram_start(srv, wk->loop, wk->index, wk->dgrams);
}

/* On the worker's thread (coroutines belong to it), after its loop. */
static void worker_drop_conns(struct cw *wk)
{
    iop_server *srv = wk->srv;
    /* Coroutines done but not reaped yet (the loop ran dry first).  A
     * suspended one is left only if the loop failed: dropped as it stands. */
    while (wk->conns) {
        struct cconn *cc = wk->conns;
        if (!cc->done) {
            iop_io_stop(&cc->io);
            iop_timer_stop(&cc->idle);
            close(cc->conn.fd);
            atomic_fetch_sub(&srv->nconns, 1);
        }
        cconn_free(cc);
    }
}

static void worker_teardown(struct cw *wk)
{
    iop_server *srv = wk->srv;
    worker_drop_conns(wk);
    if (wk->loop && iop_loop_free(wk->loop) < 0)
        iop__server_log(srv, "worker %u: loop still busy at exit", wk->index);
    free(wk->ls);
    free(wk->dgrams);
}

static void *worker_main(void *arg)
{
    struct cw *wk = arg;
    int rc = worker_listen(wk);
    if (rc < 0) {
        iop__server_log(wk->srv, "worker %u: %s", wk->index, iop_strerror(rc));
        wk->rc = rc;
        worker_stop(wk, 1);
    } else if (atomic_load(&wk->srv->stopping)) {
        worker_stop(wk, atomic_load(&wk->srv->stopping) >= IOP__NOW);
    }
    rc = iop_loop_run(wk->loop, IOP_RUN_DEFAULT);
    if (rc < 0 && !wk->rc)
        wk->rc = rc;
    worker_drop_conns(wk);
    return NULL;
}

static int worker_init(iop_server *srv, struct cw *wk, unsigned index)
{
    wk->srv = srv;
    wk->index = index;
    wk->ls = calloc(srv->nls, sizeof *wk->ls);
    wk->dgrams = calloc(srv->nls, sizeof *wk->dgrams);
    if (!wk->ls || !wk->dgrams)
        return -ENOMEM;
    int rc = iop_loop_new(&wk->loop, srv->cfg.backend, srv->cfg.loop_flags);
    if (rc < 0)
        return rc;
    iop_timer_init(&wk->grace, grace_over);
    wk->grace.data = wk;
    wk->wake.data = wk;
    return iop_async_start(wk->loop, &wk->wake, wake_cb);
}

static void notify_workers(iop_server *srv)
{
    struct cmodel *m = srv->model;
    for (unsigned w = 0; w < m->n; w++)
        iop_async_send(&m->workers[w].wake);
}

int iop__coro_run(iop_server *srv)
{
    struct cmodel m = {calloc(srv->nworkers, sizeof(struct cw)), srv->nworkers};
    if (!m.workers)
        return -ENOMEM;
    int rc = 0;
    for (unsigned w = 0; w < m.n && rc == 0; w++)
        rc = worker_init(srv, &m.workers[w], w);
    if (rc == 0) {
        srv->model = &m;
        srv->notify = notify_workers;
        if (atomic_load(&srv->stopping))
            notify_workers(srv);
        iop__server_run_workers(m.workers, sizeof(struct cw), m.n, worker_main);
        iop__server_quiesce(srv);
        srv->model = NULL;
        for (unsigned w = 0; w < m.n && rc == 0; w++)
            rc = m.workers[w].rc;
    }
    for (unsigned w = 0; w < m.n; w++) {
        if (m.workers[w].loop && m.workers[w].wake.loop)
            iop_async_stop(&m.workers[w].wake);
        worker_teardown(&m.workers[w]);
    }
    free(m.workers);
    return rc;
}

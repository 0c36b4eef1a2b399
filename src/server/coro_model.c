/* coro_model.c - the coro model: a coroutine per connection on a reactor.
 *
 * The workers are reactor.c's, as in the event model: a loop per worker
 * thread, its own SO_REUSEPORT sockets, an acceptor per stream listener and
 * a datagram handle per udp: listener.  Each accepted connection gets an
 * iop_coro that runs the blocking-style handler (verify / setup / handle /
 * finish) over an iop_conn whose raw ops are conn.c's readiness ones; its
 * `wait` parks the coroutine:
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
 * Stopping: a worker's coroutines may finish for at most grace_ms (those
 * idle between requests are resumed with -ECANCELED at once); then (or at
 * once on stop now) it sets its stop_now flag and resumes every parked
 * coroutine with -ECANCELED. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "ioplex/coro.h"
#include "server/conn_int.h"
#include "server/reactor_int.h"

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
};

struct cw {
    struct iop__reactor r; /* first: the reactor's worker is this */
    struct cconn *conns;   /* every cconn not yet freed */
    size_t live;           /* of them, not done */
    atomic_int now;        /* the conns' stop_now flag */
    int now_done;          /* cancel_all ran */
};

static struct cw *cw_of(struct iop__reactor *r)
{
    return (struct cw *)r;
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
    cc->done = 1;
    iop_io_stop(&cc->io);
    close(cc->conn.fd);
    wk->live--;
    if (iop_defer_start(wk->r.loop, &cc->reap, reap_cb) < 0)
        cconn_free(cc); /* safe: we are not on its stack */
    iop__reactor_conn_closed(&wk->r);
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
        rc = iop_io_start(wk->r.loop, &cc->io, want | IOP_LEVEL);
    } else if ((cc->io.events & (IOP_READ | IOP_WRITE)) != want) {
        rc = iop_io_modify(&cc->io, want | IOP_LEVEL);
    }
    if (rc < 0)
        return rc;
    unsigned idle = iop__conn_wait_ms(c);
    if (idle && (rc = iop_timer_start(wk->r.loop, &cc->idle, idle, 0)) < 0)
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

/* recv parks first after a short read; if bytes did come meanwhile, the
 * level-triggered watcher reports them at once. */
static const struct iop__conn_ops co_ops = {
    .recv = iop__conn_recv_drained,
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

/* ---- the reactor's ops ----------------------------------------------------- */

static int co_open(struct iop__reactor_listener *li, int fd, void **conn)
{
    struct cw *wk = cw_of(li->r);
    iop_server *srv = wk->r.srv;
    struct cconn *cc = calloc(1, sizeof *cc);
    int rc = cc ? iop_coro_new(conn_body, cc, srv->cfg.stack_size, &cc->co) : -ENOMEM;
    if (rc < 0) {
        free(cc);
        close(fd);
        return rc;
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
    *conn = cc;
    return 0;
}

static void co_start(struct iop__reactor *r, void *conn)
{
    (void)r;
    struct cconn *cc = conn;
    if (iop_coro_resume(cc->co, NULL, NULL) == 1)
        conn_finished(cc);
}

static size_t co_count(const struct iop__reactor *r)
{
    return ((const struct cw *)r)->live;
}

static void co_stop(struct iop__reactor *r)
{
    struct cw *wk = cw_of(r);
    iop__reactor_start_grace(r);
    /* Connections idle between requests end now, not at the grace
     * limit. */
    for (struct cconn *cc = wk->conns; cc; cc = cc->next)
        if (!cc->done && cc->conn.idle)
            conn_resume(cc, -ECANCELED);
}

/* Every parked coroutine gets -ECANCELED (loop callbacks only).  Once is
 * enough: with the stop_now flag set none can park again. */
static void co_drop(struct iop__reactor *r)
{
    struct cw *wk = cw_of(r);
    if (wk->now_done)
        return;
    wk->now_done = 1;
    atomic_store(&wk->now, 1);
    /* Resuming never unlinks (reaping is deferred): the list holds still. */
    for (struct cconn *cc = wk->conns; cc; cc = cc->next)
        if (!cc->done)
            conn_resume(cc, -ECANCELED);
}

/* On the worker's thread (coroutines belong to it) after its loop, and at
 * teardown for a worker that never ran. */
static void co_drop_conns(struct iop__reactor *r)
{
    struct cw *wk = cw_of(r);
    /* Coroutines done but not reaped yet (the loop ran dry first).  A
     * suspended one is left only if the loop failed: dropped as it stands. */
    while (wk->conns) {
        struct cconn *cc = wk->conns;
        if (!cc->done) {
            iop_io_stop(&cc->io);
            iop_timer_stop(&cc->idle);
            close(cc->conn.fd);
            atomic_fetch_sub(&r->srv->nconns, 1);
        }
        cconn_free(cc);
    }
}

const struct iop__reactor_ops iop__coro_ops = {
    .worker_size = sizeof(struct cw),
    .conns_on_loop = 1,
    .open = co_open,
    .start = co_start,
    .count = co_count,
    .stop = co_stop,
    .drop = co_drop,
    .after_run = co_drop_conns,
    .fini = co_drop_conns,
};

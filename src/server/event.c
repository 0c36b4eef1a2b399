/* event.c - the event model: one reactor per worker thread.
 *
 * Each worker has its own loop, its own SO_REUSEPORT sockets (the kernel
 * spreads connections among them), an acceptor and a stream context per
 * stream listener, and a datagram handle per udp: listener.  Workers share
 * nothing but the server's connection count and its stopping state.
 *
 * Stopping: iop_server_shutdown() wakes every worker (iop_async).  A worker
 * stops its acceptors and datagram handles, asks each connection to end
 * (stop reading, finish sending, close), and closes what is left when the
 * grace period ends; its loop then runs dry and the thread returns. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include "server/server_int.h"

struct worker;

/* What a stream context knows of its listener (iop_stream_ctx_data). */
struct ev_listener {
    struct worker *wk;
    int index;
};

struct worker {
    iop_server *srv;
    unsigned index;
    iop_loop *loop;
    iop_async wake;
    iop_timer grace;
    iop_acceptor *accs;        /* per listener (unused for udp) */
    int *acc_live;             /* acceptor started and its close_cb not yet run */
    iop_stream_ctx **ctxs;     /* per listener (NULL for udp) */
    struct ev_listener *infos; /* per listener */
    iop_dgram **dgrams;        /* per listener (NULL for stream) */
    int paused;                /* acceptors paused at max_conns */
    int stopping;              /* this worker has begun its stop */
    uint64_t too_high_logged;  /* select: last log of an fd >= FD_SETSIZE, ms */
    int rc;
};

struct ev_model {
    struct worker *workers;
    unsigned n;
};

static iop_server *server_of(const iop_stream *s)
{
    struct ev_listener *li = iop_stream_ctx_data(iop_stream_ctx_of(s));
    return li->wk->srv;
}

iop_server *iop_stream_server(const iop_stream *s)
{
    return server_of(s);
}

int iop_stream_listener(const iop_stream *s)
{
    struct ev_listener *li = iop_stream_ctx_data(iop_stream_ctx_of(s));
    return li->index;
}

/* ---- max_conns ---------------------------------------------------------- */

static void acceptors_pause(struct worker *wk, int pause)
{
    iop_server *srv = wk->srv;
    if (wk->paused == pause || wk->stopping)
        return;
    wk->paused = pause;
    for (size_t i = 0; i < srv->nls; i++)
        if (wk->acc_live[i])
            (void)(pause ? iop_acceptor_pause(&wk->accs[i]) : iop_acceptor_resume(&wk->accs[i]));
}

/* A connection closed somewhere in this process: paused workers may go on.
 * Other workers' loops are woken (rare: only at the limit). */
static void conns_fell(struct worker *wk)
{
    struct ev_model *m = wk->srv->model;
    acceptors_pause(wk, 0);
    for (unsigned w = 0; w < m->n; w++)
        if (&m->workers[w] != wk && m->workers[w].paused)
            iop_async_send(&m->workers[w].wake);
}

/* ---- connections ------------------------------------------------------- */

static void stream_read(iop_stream *s, ssize_t n, const char *buf)
{
    const struct iop_handler *h = server_of(s)->cfg.handler;
    if (n > 0)
        h->on_data(s, buf, (size_t)n);
    else if (n == 0 && h->on_eof)
        h->on_eof(s);
    else if (n == 0)
        iop_stream_end(s); /* send what is owed, then close */
    else
        iop_stream_close(s);
}

static void stream_drain(iop_stream *s)
{
    const struct iop_handler *h = server_of(s)->cfg.handler;
    if (h->on_drain)
        h->on_drain(s);
}

static void worker_check_done(struct worker *wk);

static void stream_closed(iop_stream *s)
{
    struct ev_listener *li = iop_stream_ctx_data(iop_stream_ctx_of(s));
    struct worker *wk = li->wk;
    iop_server *srv = wk->srv;
    if (srv->cfg.handler->on_close)
        srv->cfg.handler->on_close(s);
    size_t before = atomic_fetch_sub(&srv->nconns, 1);
    if (before >= srv->cfg.max_conns)
        conns_fell(wk);
    if (wk->stopping)
        worker_check_done(wk);
}

static void too_high(struct worker *wk, int fd)
{
    /* select cannot watch it: the connection is closed rather than left
     * hanging, and that is said at most once a second. */
    uint64_t now = iop_loop_now(wk->loop);
    if (!wk->too_high_logged || now - wk->too_high_logged >= 1000) {
        wk->too_high_logged = now;
        iop__server_log(wk->srv, "select: fd %d >= FD_SETSIZE (%d): connection closed", fd,
                        FD_SETSIZE);
    }
}

static void on_accept(iop_acceptor *acc, int fd)
{
    struct ev_listener *li = acc->data;
    struct worker *wk = li->wk;
    iop_server *srv = wk->srv;
    if (!(iop_loop_caps(wk->loop) & IOP_CAP_ANY_FD) && fd >= FD_SETSIZE) {
        too_high(wk, fd);
        close(fd);
        return;
    }
    iop_stream *s;
    int rc = iop_stream_open(wk->ctxs[li->index], fd, &s); /* owns fd from here */
    if (rc < 0) {
        iop__server_log(srv, "connection refused: %s", iop_strerror(rc));
        return;
    }
    if (atomic_fetch_add(&srv->nconns, 1) + 1 >= srv->cfg.max_conns)
        acceptors_pause(wk, 1);
    if (srv->cfg.handler->on_open)
        srv->cfg.handler->on_open(s);
    (void)iop_stream_read_start(s); /* fails only if on_open closed it */
}

static void on_accept_error(iop_acceptor *acc, int err)
{
    struct ev_listener *li = acc->data;
    iop__server_log(li->wk->srv, "accept on listener %d: %s%s", li->index, iop_strerror(err),
                    err == -EMFILE || err == -ENFILE ? " (shedding connections)" : "");
}

/* ---- a worker ------------------------------------------------------------ */

static void acceptor_closed(iop_acceptor *acc)
{
    struct ev_listener *li = acc->data;
    li->wk->acc_live[li->index] = 0;
}

static void end_stream(iop_stream *s, void *arg)
{
    (void)arg;
    const struct iop_handler *h = server_of(s)->cfg.handler;
    if (h->on_stop)
        h->on_stop(s);
    else
        iop_stream_end(s);
}

static void close_stream(iop_stream *s, void *arg)
{
    (void)arg;
    iop_stream_close(s);
}

static void for_all_streams(struct worker *wk, void (*fn)(iop_stream *, void *))
{
    for (size_t i = 0; i < wk->srv->nls; i++)
        if (wk->ctxs[i])
            iop_stream_ctx_foreach(wk->ctxs[i], fn, NULL);
}

static size_t worker_streams(const struct worker *wk)
{
    size_t n = 0;
    for (size_t i = 0; i < wk->srv->nls; i++)
        if (wk->ctxs[i])
            n += iop_stream_ctx_count(wk->ctxs[i]);
    return n;
}

/* Stopping and nothing left: let the loop run dry. */
static void worker_check_done(struct worker *wk)
{
    if (worker_streams(wk) > 0)
        return;
    iop_timer_stop(&wk->grace);
    iop_async_stop(&wk->wake);
}

static void grace_over(iop_timer *t)
{
    struct worker *wk = t->data;
    for_all_streams(wk, close_stream);
}

static void worker_stop(struct worker *wk, int now)
{
    iop_server *srv = wk->srv;
    if (!wk->stopping) {
        wk->stopping = 1;
        for (size_t i = 0; i < srv->nls; i++)
            if (wk->acc_live[i])
                iop_acceptor_stop(&wk->accs[i], acceptor_closed);
        iop__server_refuse(srv, wk->index);
        iop__server_dgram_stop(srv, wk->dgrams);
        for_all_streams(wk, end_stream);
        if (worker_streams(wk) > 0)
            (void)iop_timer_start(wk->loop, &wk->grace, srv->cfg.grace_ms, 0);
    }
    if (now)
        for_all_streams(wk, close_stream);
    worker_check_done(wk);
}

static void wake_cb(iop_async *a)
{
    struct worker *wk = a->data;
    int stopping = atomic_load(&wk->srv->stopping);
    if (stopping)
        worker_stop(wk, stopping >= IOP__NOW);
    else if (wk->paused && atomic_load(&wk->srv->nconns) < wk->srv->cfg.max_conns)
        acceptors_pause(wk, 0);
}

static int worker_listen(struct worker *wk)
{
    iop_server *srv = wk->srv;
    for (size_t i = 0; i < srv->nls; i++) {
        wk->infos[i] = (struct ev_listener){wk, (int)i};
        if (srv->ls[i].kind == IOP_ADDR_UDP)
            continue;
        struct iop_stream_config sc = {
            .on_read = stream_read,
            .on_drain = stream_drain,
            .on_close = stream_closed,
            .high_water = srv->cfg.high_water,
            .idle_timeout_ms = srv->cfg.idle_timeout_ms,
            .data = &wk->infos[i],
        };
        int rc = iop_stream_ctx_new(wk->loop, &sc, &wk->ctxs[i]);
        if (rc < 0)
            return rc;
        wk->accs[i].data = &wk->infos[i];
        rc = iop_acceptor_start(wk->loop, &wk->accs[i], iop__listener_fd(srv, i, wk->index),
                                on_accept, on_accept_error);
        if (rc < 0)
            return rc;
        wk->acc_live[i] = 1;
    }
    return iop__server_dgram_start(srv, wk->loop, wk->index, wk->dgrams);
}

static void worker_teardown(struct worker *wk)
{
    iop_server *srv = wk->srv;
    for (size_t i = 0; i < srv->nls; i++)
        if (wk->ctxs[i])
            (void)iop_stream_ctx_free(wk->ctxs[i]);
    if (wk->loop && iop_loop_free(wk->loop) < 0)
        iop__server_log(srv, "worker %u: loop still busy at exit", wk->index);
    free(wk->accs);
    free(wk->acc_live);
    free(wk->ctxs);
    free(wk->infos);
    free(wk->dgrams);
}

static void *worker_main(void *arg)
{
    struct worker *wk = arg;
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
    return NULL;
}

static int worker_init(iop_server *srv, struct worker *wk, unsigned index)
{
    wk->srv = srv;
    wk->index = index;
    size_t n = srv->nls;
    wk->accs = calloc(n, sizeof *wk->accs);
    wk->acc_live = calloc(n, sizeof *wk->acc_live);
    wk->ctxs = calloc(n, sizeof *wk->ctxs);
    wk->infos = calloc(n, sizeof *wk->infos);
    wk->dgrams = calloc(n, sizeof *wk->dgrams);
    if (!wk->accs || !wk->acc_live || !wk->ctxs || !wk->infos || !wk->dgrams)
        return -ENOMEM;
    /* Loops are made here, on the caller's thread, so that a backend that
     * cannot start (io_uring refused) fails iop_server_run at once. */
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
    struct ev_model *m = srv->model;
    for (unsigned w = 0; w < m->n; w++)
        iop_async_send(&m->workers[w].wake);
}

int iop__event_run(iop_server *srv)
{
    struct ev_model m = {calloc(srv->nworkers, sizeof(struct worker)), srv->nworkers};
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
        iop__server_run_workers(m.workers, sizeof(struct worker), m.n, worker_main);
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

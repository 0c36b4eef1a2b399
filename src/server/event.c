/* event.c - the event model: one reactor per worker thread (reactor.c), and
 * each accepted connection a stream.
 *
 * Each worker has a stream context per stream listener, whose data is the
 * worker's iop__reactor_listener (which names the server and the listener
 * index), so that a connection is a stream and nothing more.  Stopping:
 * each connection is asked to end (the handler's on_stop, or stop reading,
 * finish sending, close); when the grace period ends (or on stop now) what
 * is left is closed. */
#include "server/reactor_int.h"

static struct iop__reactor_listener *listener_of(const iop_stream *s)
{
    return iop_stream_ctx_data(iop_stream_ctx_of(s));
}

iop_server *iop_stream_server(const iop_stream *s)
{
    return listener_of(s)->r->srv;
}

int iop_stream_listener(const iop_stream *s)
{
    return listener_of(s)->index;
}

/* ---- connections ------------------------------------------------------- */

static void stream_read(iop_stream *s, ssize_t n, const char *buf)
{
    const struct iop_handler *h = iop_stream_server(s)->cfg.handler;
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
    const struct iop_handler *h = iop_stream_server(s)->cfg.handler;
    if (h->on_drain)
        h->on_drain(s);
}

static void stream_closed(iop_stream *s)
{
    struct iop__reactor *r = listener_of(s)->r;
    if (r->srv->cfg.handler->on_close)
        r->srv->cfg.handler->on_close(s);
    iop__reactor_conn_closed(r);
}

static void stream_tls_fail(void *arg, const iop_stream *s, int err)
{
    iop__server_tls_log(arg, iop_stream_fd(s), iop_stream_tls_why(s), err);
}

/* ---- the reactor's ops ----------------------------------------------------- */

/* A stream context per stream listener, in li->data. */
static int ev_listen(struct iop__reactor_listener *li)
{
    iop_server *srv = li->r->srv;
    struct iop_stream_config sc = {
        .on_read = stream_read,
        .on_drain = stream_drain,
        .on_close = stream_closed,
        .high_water = srv->cfg.high_water,
        .idle_timeout_ms = srv->cfg.idle_timeout_ms,
        .data = li,
    };
    iop_stream_ctx *ctx;
    int rc = iop_stream_ctx_new(li->r->loop, &sc, &ctx);
    if (rc == 0)
        li->data = ctx;
    if (rc == 0 && srv->ls[li->index].tls)
        iop_stream_ctx_on_tls_fail(ctx, stream_tls_fail, srv);
    return rc;
}

static int ev_open(struct iop__reactor_listener *li, int fd, void **conn)
{
    iop_stream *s = NULL;
    int rc = iop_stream_open(li->data, fd, &s); /* owns fd from here */
    *conn = s;
    return rc;
}

static void ev_start(struct iop__reactor *r, void *conn)
{
    iop_stream *s = conn;
    const struct iop__reactor_listener *li = iop_stream_ctx_data(iop_stream_ctx_of(s));
    iop_tls_ctx *tls = r->srv->ls[li->index].tls;
    if (tls && iop_stream_tls(s, tls, NULL) < 0) {
        iop_stream_close(s); /* out of memory: shed it */
        return;
    }
    if (r->srv->cfg.handler->on_open)
        r->srv->cfg.handler->on_open(s);
    (void)iop_stream_read_start(s); /* fails only if on_open closed it */
}

static void for_all_streams(struct iop__reactor *r, void (*fn)(iop_stream *, void *))
{
    for (size_t i = 0; i < r->srv->nls; i++)
        if (r->ls[i].data)
            iop_stream_ctx_foreach(r->ls[i].data, fn, NULL);
}

static size_t ev_count(const struct iop__reactor *r)
{
    size_t n = 0;
    for (size_t i = 0; i < r->srv->nls; i++)
        if (r->ls[i].data)
            n += iop_stream_ctx_count(r->ls[i].data);
    return n;
}

static void end_stream(iop_stream *s, void *arg)
{
    (void)arg;
    const struct iop_handler *h = iop_stream_server(s)->cfg.handler;
    if (h->on_stop)
        h->on_stop(s);
    else
        iop_stream_end(s);
}

/* Ask first: streams that end at once need no grace. */
static void ev_stop(struct iop__reactor *r)
{
    for_all_streams(r, end_stream);
    iop__reactor_start_grace(r);
}

static void close_stream(iop_stream *s, void *arg)
{
    (void)arg;
    iop_stream_close(s);
}

static void ev_drop(struct iop__reactor *r)
{
    for_all_streams(r, close_stream);
}

static void ev_fini(struct iop__reactor *r)
{
    for (size_t i = 0; i < r->srv->nls; i++)
        if (r->ls[i].data)
            (void)iop_stream_ctx_free(r->ls[i].data);
}

const struct iop__reactor_ops iop__event_ops = {
    .worker_size = sizeof(struct iop__reactor),
    .conns_on_loop = 1,
    .listen = ev_listen,
    .open = ev_open,
    .start = ev_start,
    .count = ev_count,
    .stop = ev_stop,
    .drop = ev_drop,
    .fini = ev_fini,
};

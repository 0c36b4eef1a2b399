/* stream.c - contexts, the idle clock, deferred work and closing; the
 * write queue is queue.c's, the IO itself the engine's (ready.c or
 * complete.c, through ctx->eng) and the wire's (wire.c). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "stream/stream_int.h"

/* ---- context ----------------------------------------------------------- */

static void idle_tick(iop_timer *t);
static void pending_run(iop_defer *d);

/* sendfile(2) cannot be told MSG_NOSIGNAL, and TCP raises SIGPIPE on it
 * even for a short count: a process still at SIGPIPE's default would die
 * of a vanished peer.  Servers ignore SIGPIPE; so do we, once, unless the
 * program chose a disposition of its own. */
static void sigpipe_ignore(void)
{
    struct sigaction old;
    if (sigaction(SIGPIPE, NULL, &old) == 0 && !(old.sa_flags & SA_SIGINFO) &&
        old.sa_handler == SIG_DFL)
        (void)signal(SIGPIPE, SIG_IGN);
}

int iop_stream_ctx_new(iop_loop *loop, const struct iop_stream_config *cfg, iop_stream_ctx **out)
{
    if (!loop || !cfg || !cfg->on_read || !out)
        return -EINVAL;
    iop_stream_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return -ENOMEM;
    ctx->loop = loop;
    ctx->cfg = *cfg;
    ctx->eng =
        (iop_loop_caps(loop) & IOP_CAP_COMPLETION) ? &iop__stream_complete : &iop__stream_ready;
    ctx->short_full = ctx->eng->short_full(loop);
    if (!ctx->cfg.high_water)
        ctx->cfg.high_water = 1u << 20;
    if (!ctx->cfg.low_water || ctx->cfg.low_water > ctx->cfg.high_water)
        ctx->cfg.low_water = ctx->cfg.high_water / 4;
    if (!ctx->cfg.read_size)
        ctx->cfg.read_size = ctx->eng->read_size;
    if (!ctx->cfg.ring_buffers)
        ctx->cfg.ring_buffers = 512;
    iop_timer_init(&ctx->idle_timer, idle_tick);
    ctx->idle_timer.data = ctx;
    ctx->spare_fd = -1;
    sigpipe_ignore();
    ctx->defer.data = ctx;
    *out = ctx;
    return 0;
}

int iop_stream_ctx_free(iop_stream_ctx *ctx)
{
    if (!ctx)
        return 0;
    if (ctx->count)
        return -EBUSY;
    iop_timer_stop(&ctx->idle_timer);
    iop_defer_cancel(&ctx->defer);
    iop_bufring_free(ctx->ring);
    while (ctx->spare) {
        struct wchunk *c = ctx->spare;
        ctx->spare = c->next;
        free(c);
    }
    if (ctx->spare_fd >= 0)
        close(ctx->spare_fd);
    free(ctx->pending);
    free(ctx->rbuf);
    iop__stls_ctx_free(ctx);
    free(ctx);
    return 0;
}

iop_loop *iop_stream_ctx_loop(const iop_stream_ctx *ctx)
{
    return ctx->loop;
}

size_t iop_stream_ctx_count(const iop_stream_ctx *ctx)
{
    return ctx->count;
}

void *iop_stream_ctx_data(const iop_stream_ctx *ctx)
{
    return ctx->cfg.data;
}

iop_stream_ctx *iop_stream_ctx_of(const iop_stream *s)
{
    return s->ctx;
}

/* ---- idle clock ---------------------------------------------------------
 * One list per context in order of last activity and one timer: touching
 * a stream moves it to the tail, the timer looks at the head.  O(1) per
 * event and no timer per connection. */

static void idle_unlink(iop_stream *s)
{
    iop_stream_ctx *ctx = s->ctx;
    if (!s->idle_prev && ctx->idle_head != s)
        return;
    if (s->idle_prev)
        s->idle_prev->idle_next = s->idle_next;
    else
        ctx->idle_head = s->idle_next;
    if (s->idle_next)
        s->idle_next->idle_prev = s->idle_prev;
    else
        ctx->idle_tail = s->idle_prev;
    s->idle_prev = s->idle_next = NULL;
}

/* The list holds every open stream (iop_stream_ctx_foreach walks it); only
 * with an idle timeout does activity reorder it. */
static void idle_link_tail(iop_stream *s)
{
    iop_stream_ctx *ctx = s->ctx;
    s->idle_prev = ctx->idle_tail;
    if (ctx->idle_tail)
        ctx->idle_tail->idle_next = s;
    else
        ctx->idle_head = s;
    ctx->idle_tail = s;
}

void iop__stream_touch(iop_stream *s)
{
    iop_stream_ctx *ctx = s->ctx;
    if (!ctx->cfg.idle_timeout_ms)
        return;
    uint32_t now = (uint32_t)iop_loop_now(ctx->loop);
    /* Touched already at this millisecond: it was moved to the tail then,
     * and everything behind it has the same time, so the list stays in
     * order without moving it again (a read and a write per request). */
    if (s->last_active == now && (s->idle_prev || ctx->idle_head == s))
        return;
    s->last_active = now;
    if (ctx->idle_tail == s || (!s->idle_prev && ctx->idle_head != s))
        return; /* already last, or unlinked because it failed */
    idle_unlink(s);
    idle_link_tail(s);
}

void iop_stream_ctx_foreach(iop_stream_ctx *ctx, void (*fn)(iop_stream *s, void *arg), void *arg)
{
    iop_stream *next;
    for (iop_stream *s = ctx->idle_head; s; s = next) {
        next = s->idle_next;
        fn(s, arg);
    }
}

static void idle_tick(iop_timer *t)
{
    iop_stream_ctx *ctx = t->data;
    uint32_t now = (uint32_t)iop_loop_now(ctx->loop);
    iop_stream *s;
    while ((s = ctx->idle_head) && now - s->last_active >= ctx->cfg.idle_timeout_ms) {
        idle_unlink(s); /* so that a failing stream cannot stay at the head */
        iop__stream_fail(s, -ETIMEDOUT);
    }
    if (!ctx->count)
        iop_timer_stop(t);
}

static void idle_start(iop_stream_ctx *ctx)
{
    unsigned ms = ctx->cfg.idle_timeout_ms;
    if (!ms || iop_timer_active(&ctx->idle_timer))
        return;
    unsigned period = ms / 4 < 1000 ? ms / 4 : 1000;
    (void)iop_timer_start(ctx->loop, &ctx->idle_timer, period ? period : 1, period ? period : 1);
}

/* ---- deferred work ------------------------------------------------------
 * Work that must not run inside the caller's call (on_close after close,
 * an error found inside write) or that batches better before the loop
 * waits (a flush of several writes) goes through one defer per context. */

/* Room made when a stream opens, so that pending one cannot fail: a write
 * on the completion engine (and an error found inside a call) only goes on
 * from here.  A stream is listed once, but while the list runs, its run
 * part (up to every stream) still sits before what is pended meanwhile:
 * two places per stream. */
static int pending_room(iop_stream_ctx *ctx)
{
    if (2 * (ctx->count + 1) <= ctx->cappending)
        return 0;
    size_t cap = ctx->cappending ? ctx->cappending * 2 : 64;
    iop_stream **p = realloc(ctx->pending, cap * sizeof *p);
    if (!p)
        return -ENOMEM;
    ctx->pending = p;
    ctx->cappending = cap;
    return 0;
}

void iop__stream_pend(iop_stream *s)
{
    if (s->flags & SF_PENDING)
        return;
    iop_stream_ctx *ctx = s->ctx;
    s->flags |= SF_PENDING;
    ctx->pending[ctx->npending++] = s;
    (void)iop_defer_start(ctx->loop, &ctx->defer, pending_run);
}

static void stream_free(iop_stream *s)
{
    iop_stream_ctx *ctx = s->ctx;
    ctx->count--;
    if (ctx->cfg.on_close)
        ctx->cfg.on_close(s);
    iop__stls_free(s);
    free(s);
    if (!ctx->count)
        iop_timer_stop(&ctx->idle_timer);
}

static void pending_one(iop_stream *s)
{
    if (s->flags & SF_DONE) {
        stream_free(s);
        return;
    }
    if ((s->flags & (SF_FAILED | SF_ERR_TOLD | SF_CLOSING)) == SF_FAILED) {
        iop__stream_deliver(s, s->err, NULL);
        return;
    }
    if (s->flags & SF_CLOSING)
        return;
    if (s->tls)
        iop__stls_pending(s);
    if (s->flags & (SF_CLOSING | SF_FAILED))
        return;
    s->ctx->eng->pending(s);
}

static void pending_run(iop_defer *d)
{
    iop_stream_ctx *ctx = d->data;
    /* Only the streams pended before this run: work they pend again (an
     * edge read that yielded) waits for the next iteration. */
    size_t n = ctx->npending;
    for (size_t i = 0; i < n; i++) {
        iop_stream *s = ctx->pending[i];
        s->flags &= (uint16_t)~SF_PENDING;
        pending_one(s);
    }
    memmove(ctx->pending, ctx->pending + n, (ctx->npending - n) * sizeof *ctx->pending);
    ctx->npending -= n;
    if (ctx->npending)
        (void)iop_defer_start(ctx->loop, &ctx->defer, pending_run);
}

/* ---- streams ----------------------------------------------------------- */

int iop_stream_open(iop_stream_ctx *ctx, int fd, iop_stream **out)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    if (pending_room(ctx) < 0) {
        close(fd);
        return -ENOMEM;
    }
    iop_stream *s = calloc(1, ctx->eng->stream_size);
    if (!s) {
        close(fd);
        return -ENOMEM;
    }
    s->ctx = ctx;
    int rc = ctx->eng->open(s, fd);
    if (rc < 0) {
        close(fd);
        free(s);
        return rc;
    }
    ctx->count++;
    idle_start(ctx);
    s->last_active = (uint32_t)iop_loop_now(ctx->loop);
    idle_link_tail(s);
    *out = s;
    return 0;
}

void iop_stream_set_data(iop_stream *s, void *data)
{
    s->data = data;
}

void *iop_stream_data(const iop_stream *s)
{
    return s->data;
}

int iop_stream_fd(const iop_stream *s)
{
    return iop__sfd(s);
}

iop_loop *iop_stream_loop(const iop_stream *s)
{
    return s->ctx->loop;
}

size_t iop_stream_queued(const iop_stream *s)
{
    return s->queued;
}

int iop_stream_read_start(iop_stream *s)
{
    if (s->flags & (SF_CLOSING | SF_FAILED))
        return -EPIPE;
    if (s->flags & SF_READING)
        return 0;
    s->flags |= SF_READING;
    if (s->tls)
        iop__stream_pend(s); /* plaintext decrypted while reading was stopped */
    return s->ctx->eng->read_start(s);
}

int iop_stream_read_stop(iop_stream *s)
{
    if (!(s->flags & SF_READING))
        return 0;
    s->flags &= (uint16_t)~SF_READING;
    s->ctx->eng->read_stop(s);
    return 0;
}

/* Tell the user what came (or what went wrong), and close a failed stream
 * the user left open. */
void iop__stream_deliver(iop_stream *s, ssize_t n, const char *buf)
{
    if (s->tls)
        iop__stls_input(s, n, buf);
    else
        iop__stream_deliver_plain(s, n, buf);
}

void iop__stream_deliver_plain(iop_stream *s, ssize_t n, const char *buf)
{
    if (n < 0)
        s->flags |= SF_ERR_TOLD;
    s->flags |= SF_IN_CB;
    s->ctx->cfg.on_read(s, n, buf);
    s->flags &= (uint16_t)~SF_IN_CB;
    if ((s->flags & (SF_FAILED | SF_CLOSING)) == SF_FAILED)
        iop_stream_close(s);
}

void iop__stream_fail(iop_stream *s, int err)
{
    if (s->flags & (SF_FAILED | SF_CLOSING))
        return;
    s->flags |= SF_FAILED;
    s->err = (int16_t)err;
    idle_unlink(s);
    iop__stream_deliver(s, err, NULL);
}

/* ---- closing ----------------------------------------------------------- */

void iop_stream_end(iop_stream *s)
{
    if (s->flags & (SF_CLOSING | SF_END))
        return;
    (void)iop_stream_read_stop(s);
    if (s->tls && !(s->flags & SF_FAILED)) {
        s->flags |= SF_END;
        (void)iop_stream_shutdown(s); /* close_notify, then the FIN */
        if (!s->whead && !iop__stls_held(s))
            iop_stream_close(s);
        return;
    }
    if (!s->whead || (s->flags & SF_FAILED)) {
        iop_stream_close(s);
        return;
    }
    s->flags |= SF_END;
    (void)iop_stream_shutdown(s); /* FIN after the last byte */
}

void iop_stream_close(iop_stream *s)
{
    if (s->flags & SF_CLOSING)
        return;
    s->flags |= SF_CLOSING;
    s->flags &= (uint16_t)~SF_READING;
    idle_unlink(s);
    if (s->tls)
        iop__stls_closing(s);
    s->ctx->eng->close(s);
}

/* Every request has finished: drop the queue, close the fd, and owe
 * on_close, which runs from the deferred phase, never inside a call. */
void iop__stream_done(iop_stream *s)
{
    while (s->whead) {
        struct wchunk *c = s->whead;
        s->whead = c->next;
        iop__chunk_free(s->ctx, c);
    }
    s->wtail = NULL;
    s->queued = 0;
    close(iop__sfd(s));
    s->flags |= SF_DONE;
    iop__stream_pend(s);
}

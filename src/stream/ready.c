/* ready.c - the readiness engine: nonblocking reads and writes when the
 * loop says the fd is ready (select, poll, epoll level or edge).
 *
 * Level: READ interest while reading, WRITE only while the queue is not
 * empty.  Edge: READ|WRITE registered once for the stream's life, never
 * changed; reads go on until EAGAIN, and a read resumed after a stop is
 * tried at once because the edge that announced the bytes is gone. */
#include <errno.h>
#include <stdlib.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include "stream/stream_int.h"

#define READS_PER_WAKEUP 16 /* then yield to other streams (fairness) */

static void ready_cb(iop_io *w, unsigned revents);

/* Edge interest when the loop was asked for it and can do it. */
static int edge_loop(const iop_loop *loop)
{
    return (iop_loop_flags(loop) & IOP_LOOP_EDGE) && (iop_loop_caps(loop) & IOP_CAP_EDGE);
}

static int edge(const iop_stream *s)
{
    return (s->u.io.events & IOP_EDGE) != 0;
}

static int ready_open(iop_stream *s, int fd)
{
    iop_loop *loop = s->ctx->loop;
    /* select cannot watch fd >= FD_SETSIZE.  The loop only refuses it once
     * an interest is set, later, where interest() cannot report it: refuse it
     * here, so the caller learns it (and the fd is closed), instead of a
     * stream that is never read. */
    if (!(iop_loop_caps(loop) & IOP_CAP_ANY_FD) && fd >= FD_SETSIZE)
        return -ERANGE;
    iop_io_init(&s->u.io, fd, ready_cb);
    return iop_io_start(loop, &s->u.io, edge_loop(loop) ? IOP_READ | IOP_WRITE | IOP_EDGE : 0);
}

static void interest(iop_stream *s)
{
    if (edge(s))
        return;
    unsigned ev = 0;
    if ((s->flags & SF_READING) && !(s->flags & SF_EOF))
        ev |= IOP_READ;
    if (s->whead)
        ev |= IOP_WRITE;
    if (ev != (s->u.io.events & (IOP_READ | IOP_WRITE)))
        (void)iop_io_modify(&s->u.io, ev | IOP_LEVEL);
}

static int ready_read_start(iop_stream *s)
{
    if (s->flags & SF_EOF)
        return 0; /* nothing more will come, and nothing is owed */
    if (edge(s)) {
        s->flags |= SF_READ_AGAIN;
        iop__stream_pend(s);
    } else {
        interest(s);
    }
    return 0;
}

static void ready_read_stop(iop_stream *s)
{
    s->flags &= (uint16_t)~SF_READ_AGAIN;
    interest(s);
}

static void ready_kick(iop_stream *s)
{
    /* Edge: the writable edge comes by itself after the EAGAIN that left
     * bytes queued.  Level: ask for it. */
    interest(s);
}

/* Send the queue: 1 when empty, 0 when the kernel is full, -errno. */
static int flush(iop_stream *s)
{
    return iop__wire_flush(s, 0, !edge(s));
}

static void do_write(iop_stream *s)
{
    int rc = flush(s);
    if (rc < 0) {
        iop__stream_fail(s, rc);
        return;
    }
    interest(s);
    iop__stream_drained(s);
}

/* revents: the loop's report, or 0 when none (a deferred read again). */
static void do_read(iop_stream *s, unsigned revents)
{
    iop_stream_ctx *ctx = s->ctx;
    if (!ctx->rbuf && !(ctx->rbuf = malloc(ctx->cfg.read_size))) {
        iop__stream_fail(s, -ENOMEM);
        return;
    }
    for (int i = 0; i < READS_PER_WAKEUP; i++) {
        if ((s->flags & (SF_READING | SF_CLOSING | SF_FAILED | SF_EOF)) != SF_READING)
            return;
        ssize_t n = recv(iop__sfd(s), ctx->rbuf, ctx->cfg.read_size, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                iop__stream_fail(s, -errno);
            return;
        }
        if (n == 0) {
            s->flags |= SF_EOF;
            interest(s); /* level: a readable EOF would wake us forever */
            iop__stream_deliver(s, 0, NULL);
            return;
        }
        iop__stream_touch(s);
        iop__stream_deliver(s, n, ctx->rbuf);
        /* A short read means the socket is empty, and the loop will say
         * when more comes: level always; edge too unless the report held a
         * FIN or an error, which may wait behind the data with no edge to
         * follow (then only EAGAIN or EOF says so).  That spares an edge
         * reader the recv that answers EAGAIN, one per request. */
        if ((size_t)n < ctx->cfg.read_size &&
            (!edge(s) || (revents && !(revents & (IOP_RDHUP | IOP_ERROR)))))
            return;
    }
    if (edge(s) && (s->flags & SF_READING)) {
        s->flags |= SF_READ_AGAIN;
        iop__stream_pend(s);
    }
}

static void ready_cb(iop_io *w, unsigned revents)
{
    iop_stream *s = (iop_stream *)((char *)w - offsetof(iop_stream, u.io));
    if ((revents & IOP_WRITE) && s->whead)
        do_write(s);
    if (s->flags & (SF_CLOSING | SF_FAILED))
        return;
    if ((revents & IOP_READ) && (s->flags & SF_READING))
        do_read(s, revents);
}

static void ready_pending(iop_stream *s)
{
    if (s->whead)
        do_write(s);
    if (s->flags & (SF_CLOSING | SF_FAILED))
        return;
    if (s->flags & SF_READ_AGAIN) {
        s->flags &= (uint16_t)~SF_READ_AGAIN;
        do_read(s, 0);
    }
}

static void ready_close(iop_stream *s)
{
    iop_io_stop(&s->u.io);
    iop__stream_done(s);
}

static int ready_short_full(const iop_loop *loop)
{
    return !edge_loop(loop);
}

const struct iop__stream_engine iop__stream_ready = {
    .name = "ready",
    /* A readiness stream never touches the completion members: allocating
     * only up to its io watcher keeps an idle connection small. */
    .stream_size = offsetof(iop_stream, u) + sizeof(((iop_stream *)0)->u.io),
    .read_size = 65536,
    .write_now = 1,
    .short_full = ready_short_full,
    .open = ready_open,
    .read_start = ready_read_start,
    .read_stop = ready_read_stop,
    .kick = ready_kick,
    .pending = ready_pending,
    .close = ready_close,
};

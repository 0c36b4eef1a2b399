/* complete.c - the completion engine (io_uring): the kernel does the IO and
 * we are told the result.  No readiness is emulated:
 *
 *   read      one multishot recv per stream into the context's ring of
 *             provided buffers; each buffer goes back to the ring as soon as
 *             on_read returns.  read_stop cancels it, so a stopped reader
 *             stops taking bytes from the kernel (backpressure).
 *   write     the queue becomes one sendmsg (up to 64 chunks) per round;
 *             writes made while one is in flight join the next round.
 *   sendfile  the one exception: sendfile(2) inline, bytes queued before
 *             the file sent inline too (MSG_MORE), until the socket is full;
 *             then a one-shot poll request waits for room.  io_uring has no
 *             sendfile op, and SPLICE ops always run on io-wq threads.
 *   close     cancel what is in flight, wait for every completion (the
 *             kernel may still be using our memory), then close the fd. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "stream/stream_int.h"

/* The in-flight send.  Part of the extra state, so that a round of the
 * queue never allocates: a queued response, once accepted, cannot be cut
 * short by a failed malloc. */
struct usend {
    iop_op op;
    iop_stream *s;
    int busy;
    struct msghdr msg;
    struct iovec iov[IOP__IOV_BATCH];
};

struct comp_extra {
    struct usend send;
    struct wchunk *stash;
    iop_op wait; /* POLLOUT: a file (or the bytes before it) met a full socket */
};

static const struct comp_extra no_extra;

static const struct comp_extra *xt(const iop_stream *s)
{
    return s->u.c.x ? s->u.c.x : &no_extra;
}

static struct comp_extra *xget(iop_stream *s)
{
    if (!s->u.c.x)
        s->u.c.x = calloc(1, sizeof *s->u.c.x);
    return s->u.c.x;
}

/* Free the extra part once nothing uses it or will: it stays while bytes
 * are queued. */
static void xtrim(iop_stream *s)
{
    struct comp_extra *x = s->u.c.x;
    if (x && !s->whead && !x->send.busy && !x->stash && !x->wait.inflight) {
        free(x);
        s->u.c.x = NULL;
    }
}

static int comp_reserve(iop_stream *s)
{
    return xget(s) ? 0 : -ENOMEM;
}

static void start_tx(iop_stream *s);
static void maybe_done(iop_stream *s);
static int wait_room(iop_stream *s);

#define STREAM_OF_RECV(op) ((iop_stream *)((char *)(op)-offsetof(iop_stream, u.c.recv)))

/* ---- reading ----------------------------------------------------------- */

static void stash(iop_stream *s, const char *buf, size_t n)
{
    struct wchunk *c = malloc(sizeof *c + n);
    if (!c) {
        iop__stream_fail(s, -ENOMEM);
        return;
    }
    memset(c, 0, sizeof *c);
    c->len = c->cap = (uint32_t)n;
    memcpy(c->data, buf, n);
    struct comp_extra *x = xget(s);
    if (!x) {
        free(c);
        iop__stream_fail(s, -ENOMEM);
        return;
    }
    struct wchunk **pp = &x->stash;
    while (*pp)
        pp = &(*pp)->next;
    *pp = c;
}

static void on_data(iop_stream *s, const char *buf, int n)
{
    if (s->flags & (SF_CLOSING | SF_FAILED))
        return;
    iop__stream_touch(s);
    if ((s->flags & SF_READING) && !xt(s)->stash)
        iop__stream_deliver(s, n, buf);
    else
        stash(s, buf, (size_t)n); /* read_stop came before these bytes */
}

static void on_eof(iop_stream *s)
{
    if (s->flags & (SF_CLOSING | SF_FAILED | SF_EOF))
        return;
    s->flags |= SF_EOF;
    if (s->flags & SF_READING)
        iop__stream_deliver(s, 0, NULL);
    else
        s->flags |= SF_EOF_OWED;
}

static void recv_cb(iop_op *op, int res, unsigned flags)
{
    iop_stream *s = STREAM_OF_RECV(op);
    iop_bufring *ring = s->ctx->ring;
    if (!(flags & IOP_OP_MORE))
        s->flags &= (uint16_t)~SF_RECV_ARMED;
    if (flags & IOP_OP_BUFFER) {
        if (res > 0)
            on_data(s, iop_bufring_buf(ring, op->buf_id), res);
        iop_bufring_put(ring, op->buf_id);
    } else if (res == 0) {
        on_eof(s);
    } else if (res < 0 && res != -ENOBUFS && res != -ECANCELED) {
        iop__stream_fail(s, res);
    }
    if (s->flags & SF_CLOSING) {
        maybe_done(s);
        return;
    }
    /* Ended (ENOBUFS: the ring ran dry; its buffers are back by now, since
     * completions are handled in order): arm again while reading. */
    if (!(s->flags & SF_RECV_ARMED) && (s->flags & SF_READING))
        iop__stream_pend(s);
}

static int arm_recv(iop_stream *s)
{
    iop_stream_ctx *ctx = s->ctx;
    if (s->flags & (SF_RECV_ARMED | SF_EOF | SF_FAILED | SF_CLOSING))
        return 0;
    if (!ctx->ring) {
        int rc = iop_bufring_new(ctx->loop, ctx->cfg.ring_buffers, ctx->cfg.read_size, &ctx->ring);
        if (rc < 0)
            return rc;
    }
    int rc = iop_op_recv_multishot(ctx->loop, &s->u.c.recv, iop__sfd(s), ctx->ring, recv_cb);
    if (rc < 0)
        return rc;
    s->flags |= SF_RECV_ARMED;
    return 0;
}

static int comp_read_start(iop_stream *s)
{
    /* Stashed bytes first, then the kernel's; after the EOF nothing more
     * comes, but bytes or the EOF itself may be owed from while reading
     * was stopped. */
    if (xt(s)->stash || (s->flags & (SF_EOF_OWED | SF_EOF))) {
        iop__stream_pend(s);
        return 0;
    }
    return arm_recv(s);
}

static void comp_read_stop(iop_stream *s)
{
    if (s->flags & SF_RECV_ARMED)
        (void)iop_op_cancel(&s->u.c.recv);
}

static void deliver_stash(iop_stream *s)
{
    struct wchunk *c;
    while ((s->flags & SF_READING) && !(s->flags & (SF_CLOSING | SF_FAILED)) &&
           (c = xt(s)->stash)) {
        s->u.c.x->stash = c->next;
        iop__stream_deliver(s, (ssize_t)c->len, c->data);
        free(c);
    }
    xtrim(s);
    if ((s->flags & SF_READING) && !xt(s)->stash && (s->flags & SF_EOF_OWED) &&
        !(s->flags & (SF_CLOSING | SF_FAILED))) {
        s->flags &= (uint16_t)~SF_EOF_OWED;
        iop__stream_deliver(s, 0, NULL); /* the EOF that came while stopped */
    }
}

/* ---- writing ----------------------------------------------------------- */

static void send_cb(iop_op *op, int res, unsigned flags)
{
    struct usend *u = (struct usend *)op;
    iop_stream *s = u->s;
    (void)flags;
    u->busy = 0;
    if (s->flags & SF_CLOSING) {
        maybe_done(s);
        return;
    }
    if (res == -EAGAIN) {
        /* The kernel gave up: a send it had polled for found no room again
         * and went to an io-wq worker, which does not wait on an O_NONBLOCK
         * socket either (seen on 6.18 with a peer that reads slowly).
         * Nothing was sent: wait for room ourselves, then send again. */
        int rc = wait_room(s);
        if (rc < 0)
            iop__stream_fail(s, rc);
        return;
    }
    if (res < 0) {
        iop__stream_fail(s, res);
        return;
    }
    iop__stream_consumed(s, (size_t)res);
    xtrim(s);
    start_tx(s);
    if (!(s->flags & (SF_CLOSING | SF_FAILED)))
        iop__stream_drained(s);
}

/* Only with s->u.c.x there: a call that queues made sure of it. */
static void start_send(iop_stream *s)
{
    struct usend *u = &s->u.c.x->send;
    memset(&u->msg, 0, sizeof u->msg);
    u->s = s;
    size_t total;
    int file_next, n = iop__wire_gather(s, u->iov, IOP__IOV_BATCH, &total, &file_next);
    /* Bytes before a file (a response head) wait in the socket for the
     * file's first bytes: one segment, and no Nagle stall behind a lone
     * small one. */
    int more = file_next ? MSG_MORE : 0;
    int rc;
    if (n == 1) {
        /* One buffer: a plain send spares the kernel the msghdr and iovec
         * copies of sendmsg. */
        rc = iop_op_send(s->ctx->loop, &u->op, iop__sfd(s), u->iov[0].iov_base, u->iov[0].iov_len,
                         more, send_cb);
    } else {
        u->msg.msg_iov = u->iov;
        u->msg.msg_iovlen = (size_t)n;
        rc = iop_op_sendmsg(s->ctx->loop, &u->op, iop__sfd(s), &u->msg, more, send_cb);
    }
    if (rc < 0) {
        iop__stream_fail(s, rc);
        return;
    }
    u->busy = 1;
}

/* ---- files: sendfile(2) when the socket has room ------------------------
 * io_uring has no sendfile op, and the kernel runs every SPLICE on an io-wq
 * worker thread: a thread hand-off per file.  sendfile(2) is one syscall,
 * made inline on the (non-blocking) socket; only a full socket waits, on a
 * one-shot poll request. */

static void wait_cb(iop_op *op, int res, unsigned flags)
{
    iop_stream *s = op->data;
    (void)flags;
    if (s->flags & SF_CLOSING) {
        maybe_done(s);
        return;
    }
    if (res < 0) {
        iop__stream_fail(s, res);
        return;
    }
    start_tx(s);
    xtrim(s);
}

static int wait_room(iop_stream *s)
{
    struct comp_extra *x = s->u.c.x; /* queued bytes keep it */
    x->wait.data = s;
    return iop_op_poll(s->ctx->loop, &x->wait, iop__sfd(s), POLLOUT, wait_cb);
}

/* Files and the bytes before them, at once, until the socket is full; then
 * wait for room.  What follows the last file goes as a send request. */
static void tx_now(iop_stream *s)
{
    size_t before = s->queued;
    int rc = iop__wire_flush(s, 1, 1);
    if (rc == 0)
        rc = wait_room(s);
    if (rc < 0) {
        iop__stream_fail(s, rc);
        return;
    }
    if (s->whead && !xt(s)->wait.inflight)
        start_send(s);
    if (s->queued < before && !(s->flags & (SF_CLOSING | SF_FAILED)))
        iop__stream_drained(s);
}

/* Next round of the queue, if none is in flight. */
static void start_tx(iop_stream *s)
{
    if (!s->whead || xt(s)->send.busy || xt(s)->wait.inflight)
        return;
    if (s->flags & (SF_CLOSING | SF_FAILED))
        return;
    if (iop__wire_file_ahead(s))
        tx_now(s);
    else
        start_send(s);
}

static void comp_pending(iop_stream *s)
{
    deliver_stash(s);
    if (s->flags & (SF_CLOSING | SF_FAILED))
        return;
    if ((s->flags & SF_READING) && !xt(s)->stash) {
        int rc = arm_recv(s);
        if (rc < 0) {
            iop__stream_fail(s, rc);
            return;
        }
    }
    start_tx(s);
}

/* ---- closing ----------------------------------------------------------- */

static int busy(const iop_stream *s)
{
    return (s->flags & SF_RECV_ARMED) || xt(s)->send.busy || xt(s)->wait.inflight;
}

static void maybe_done(iop_stream *s)
{
    if (busy(s) || (s->flags & SF_DONE))
        return;
    struct comp_extra *x = s->u.c.x;
    while (x && x->stash) {
        struct wchunk *c = x->stash;
        x->stash = c->next;
        free(c);
    }
    free(x);
    s->u.c.x = NULL;
    iop__stream_done(s);
}

static void comp_close(iop_stream *s)
{
    if (s->flags & SF_RECV_ARMED)
        (void)iop_op_cancel(&s->u.c.recv);
    if (xt(s)->send.busy)
        (void)iop_op_cancel(&s->u.c.x->send.op);
    if (xt(s)->wait.inflight)
        (void)iop_op_cancel(&s->u.c.x->wait);
    maybe_done(s);
}

static int comp_open(iop_stream *s, int fd)
{
    s->u.c.fd = fd;
    return 0;
}

/* The room wait is a one-shot poll request: the kernel checks readiness as
 * it is armed, so a short count can always be taken for "full". */
static int comp_short_full(const iop_loop *loop)
{
    (void)loop;
    return 1;
}

static void comp_kick(iop_stream *s)
{
    iop__stream_pend(s); /* one send for all writes of this iteration */
}

const struct iop__stream_engine iop__stream_complete = {
    .name = "complete",
    .stream_size = sizeof(iop_stream),
    .read_size = 16384,
    .write_now = 0,
    .short_full = comp_short_full,
    .open = comp_open,
    .read_start = comp_read_start,
    .read_stop = comp_read_stop,
    .kick = comp_kick,
    .reserve = comp_reserve,
    .trim = xtrim,
    .pending = comp_pending,
    .close = comp_close,
};

/* complete.c - the completion engine (io_uring): the kernel does the IO and
 * we are told the result.  No readiness is emulated:
 *
 *   read      one multishot recv per stream into the context's ring of
 *             provided buffers; each buffer goes back to the ring as soon as
 *             on_read returns.  read_stop cancels it, so a stopped reader
 *             stops taking bytes from the kernel (backpressure).
 *   write     the queue becomes one sendmsg (up to 64 chunks) per round;
 *             writes made while one is in flight join the next round.
 *   sendfile  file -> pipe -> socket as two linked splices; a socket that
 *             is full answers the second with -EAGAIN, and a one-shot poll
 *             request waits for room.
 *   close     cancel what is in flight, wait for every completion (the
 *             kernel may still be using our memory), then close the fd. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "stream/stream_int.h"

#define IOV_BATCH 64
#define PIPE_SIZE (256 * 1024)

struct usend {
    iop_op op;
    iop_stream *s;
    struct msghdr msg;
    struct iovec iov[];
};

struct usplice {
    iop_op in, out, wait;
    iop_stream *s;
    int pipe[2];
    size_t inpipe; /* bytes in the pipe, not yet in the socket */
    size_t cap;
    int nflight;
};

struct comp_extra {
    struct usend *send;
    struct usplice *splice;
    struct wchunk *stash;
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

/* Free the extra part once nothing uses it. */
static void xtrim(iop_stream *s)
{
    struct comp_extra *x = s->u.c.x;
    if (x && !x->send && !x->splice && !x->stash) {
        free(x);
        s->u.c.x = NULL;
    }
}

static void start_tx(iop_stream *s);
static void maybe_done(iop_stream *s);

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
        int rc = iop_bufring_new(ctx->loop, &ctx->ring, ctx->cfg.ring_buffers, ctx->cfg.read_size);
        if (rc < 0)
            return rc;
    }
    int rc = iop_op_recv_multishot(ctx->loop, &s->u.c.recv, iop__sfd(s), ctx->ring, recv_cb);
    if (rc < 0)
        return rc;
    s->flags |= SF_RECV_ARMED;
    return 0;
}

int iop__comp_read_start(iop_stream *s)
{
    if (xt(s)->stash || (s->flags & SF_EOF_OWED)) {
        iop__stream_pend(s); /* stashed bytes first, then the kernel's */
        return 0;
    }
    return arm_recv(s);
}

void iop__comp_read_stop(iop_stream *s)
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
    s->u.c.x->send = NULL;
    xtrim(s);
    free(u);
    if (s->flags & SF_CLOSING) {
        maybe_done(s);
        return;
    }
    if (res < 0) {
        iop__stream_fail(s, res);
        return;
    }
    iop__stream_consumed(s, (size_t)res);
    start_tx(s);
    if (!(s->flags & (SF_CLOSING | SF_FAILED)))
        iop__stream_drained(s);
}

static void start_send(iop_stream *s)
{
    int n = 0;
    struct wchunk *after = s->whead;
    for (; after && !after->is_file && n < IOV_BATCH; after = after->next)
        n++;
    /* Bytes before a file (a response head) wait in the socket for the
     * file's first bytes: one segment, and no Nagle stall behind a lone
     * small one. */
    int more = after && after->is_file ? MSG_MORE : 0;
    struct comp_extra *x = xget(s);
    struct usend *u = x ? malloc(sizeof *u + (size_t)n * sizeof(struct iovec)) : NULL;
    if (!u) {
        iop__stream_fail(s, -ENOMEM);
        return;
    }
    memset(u, 0, sizeof *u);
    u->s = s;
    int i = 0;
    for (struct wchunk *k = s->whead; i < n; k = k->next)
        u->iov[i++] = (struct iovec){(void *)(uintptr_t)iop__wchunk_at(k), k->len - k->off};
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
        free(u);
        xtrim(s);
        iop__stream_fail(s, rc);
        return;
    }
    x->send = u;
}

/* ---- sendfile: linked splices ------------------------------------------ */

static void splice_step(iop_stream *s);

static void splice_settle(struct usplice *sp)
{
    iop_stream *s = sp->s;
    if (--sp->nflight > 0)
        return;
    if (s->flags & SF_CLOSING)
        maybe_done(s);
    else if (!(s->flags & SF_FAILED))
        splice_step(s);
}

static void splice_in_cb(iop_op *op, int res, unsigned flags)
{
    struct usplice *sp = (struct usplice *)((char *)op - offsetof(struct usplice, in));
    struct wchunk *c = sp->s->whead;
    (void)flags;
    if (res > 0 && c && c->is_file) {
        sp->inpipe += (size_t)res;
        c->file_off += res;
        c->file_len -= (size_t)res;
    } else if (!(sp->s->flags & SF_CLOSING) && res != -ECANCELED) {
        iop__stream_fail(sp->s, res == 0 ? -EIO : res); /* 0: file shorter than promised */
    }
    splice_settle(sp);
}

static void splice_wait_cb(iop_op *op, int res, unsigned flags)
{
    struct usplice *sp = (struct usplice *)((char *)op - offsetof(struct usplice, wait));
    (void)flags;
    if (res < 0 && res != -ECANCELED && !(sp->s->flags & SF_CLOSING))
        iop__stream_fail(sp->s, res);
    splice_settle(sp);
}

static void splice_out_cb(iop_op *op, int res, unsigned flags)
{
    struct usplice *sp = (struct usplice *)((char *)op - offsetof(struct usplice, out));
    iop_stream *s = sp->s;
    (void)flags;
    if (res > 0) {
        sp->inpipe -= (size_t)res;
        s->queued -= (size_t)res;
        iop__stream_touch(s);
    } else if (res == -EAGAIN && !(s->flags & SF_CLOSING)) {
        /* The socket is full: wait for room, then splice the pipe out. */
        if (iop_op_poll(s->ctx->loop, &sp->wait, iop__sfd(s), POLLOUT, splice_wait_cb) == 0)
            sp->nflight++;
    } else if (res < 0 && res != -ECANCELED && !(s->flags & SF_CLOSING)) {
        iop__stream_fail(s, res);
    }
    splice_settle(sp);
}

static struct usplice *splice_get(iop_stream *s)
{
    if (xt(s)->splice)
        return xt(s)->splice;
    struct comp_extra *x = xget(s);
    if (!x)
        return NULL;
    struct usplice *sp = calloc(1, sizeof *sp);
    if (!sp)
        return NULL;
    if (pipe2(sp->pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        free(sp);
        return NULL;
    }
    int cap = fcntl(sp->pipe[1], F_SETPIPE_SZ, PIPE_SIZE);
    sp->cap = cap > 0 ? (size_t)cap : 65536;
    sp->s = s;
    x->splice = sp;
    return sp;
}

static void splice_step(iop_stream *s)
{
    struct usplice *sp = splice_get(s);
    struct wchunk *c = s->whead;
    iop_loop *loop = s->ctx->loop;
    if (!sp) {
        iop__stream_fail(s, -errno);
        return;
    }
    if (!sp->inpipe && c && c->is_file && !c->file_len) {
        s->whead = c->next; /* this file is all in the socket */
        if (!s->whead)
            s->wtail = NULL;
        iop__chunk_free(s->ctx, c);
        start_tx(s);
        if (!(s->flags & (SF_CLOSING | SF_FAILED)))
            iop__stream_drained(s);
        return;
    }
    int rc = 0;
    if (sp->inpipe) {
        rc = iop_op_splice(loop, &sp->out, sp->pipe[0], -1, iop__sfd(s), -1, sp->inpipe, 0,
                           splice_out_cb);
        sp->nflight += rc == 0;
    } else {
        size_t n = c->file_len < sp->cap ? c->file_len : sp->cap;
        rc = iop_op_splice(loop, &sp->in, c->file_fd, c->file_off, sp->pipe[1], -1, n, IOP_OP_LINK,
                           splice_in_cb);
        if (rc == 0) {
            sp->nflight++;
            rc = iop_op_splice(loop, &sp->out, sp->pipe[0], -1, iop__sfd(s), -1, n, 0,
                               splice_out_cb);
            sp->nflight += rc == 0;
        }
    }
    if (rc < 0)
        iop__stream_fail(s, rc);
}

/* Next round of the queue, if none is in flight. */
static void start_tx(iop_stream *s)
{
    if (!s->whead || xt(s)->send || (xt(s)->splice && xt(s)->splice->nflight))
        return;
    if (s->flags & (SF_CLOSING | SF_FAILED))
        return;
    if (s->whead->is_file)
        splice_step(s);
    else
        start_send(s);
}

void iop__comp_pending(iop_stream *s)
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
    return (s->flags & SF_RECV_ARMED) || xt(s)->send || (xt(s)->splice && xt(s)->splice->nflight);
}

int iop__comp_busy(const iop_stream *s)
{
    return busy(s);
}

static void maybe_done(iop_stream *s)
{
    if (busy(s) || (s->flags & SF_DONE))
        return;
    struct comp_extra *x = s->u.c.x;
    if (x && x->splice) {
        close(x->splice->pipe[0]);
        close(x->splice->pipe[1]);
        free(x->splice);
    }
    while (x && x->stash) {
        struct wchunk *c = x->stash;
        x->stash = c->next;
        free(c);
    }
    free(x);
    s->u.c.x = NULL;
    iop__stream_done(s);
}

void iop__comp_close(iop_stream *s)
{
    if (s->flags & SF_RECV_ARMED)
        (void)iop_op_cancel(&s->u.c.recv);
    if (xt(s)->send)
        (void)iop_op_cancel(&xt(s)->send->op);
    struct usplice *sp = xt(s)->splice;
    if (sp) {
        iop_op *ops[] = {&sp->in, &sp->out, &sp->wait};
        for (int i = 0; i < 3; i++)
            if (ops[i]->inflight)
                (void)iop_op_cancel(ops[i]);
    }
    maybe_done(s);
}

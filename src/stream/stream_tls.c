/* stream_tls.c - TLS on a stream, whatever engine moves its bytes.
 *
 * The transport (ioplex/tls.h) sits between the engines and the user:
 *
 *   in    what an engine delivers (a readiness recv, an io_uring ring
 *         buffer) is ciphertext: fed to the transport, and the plaintext
 *         that comes out goes to on_read in pieces of PLAIN_MAX;
 *   out   writes are encrypted at once and their ciphertext goes the way
 *         plain bytes go (tried on the socket, queued, sent by the engine),
 *         so the queue, the high-water mark and on_drain count ciphertext;
 *   held  what cannot be encrypted yet waits in order in `held`: writes
 *         before the handshake is done, and everything behind a file;
 *   files are read with pread FILE_PIECE at a time, only while the queue
 *         is under the low-water mark, so a slow reader of a big file costs
 *         at most the high-water mark; a file that turns out shorter than
 *         promised (truncated meanwhile) fails the stream with -EIO.
 *
 * Handshakes in progress are on a list per context in the order they
 * began, with one timer: those older than the handshake timeout fail. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stream/stream_int.h"

#define PLAIN_MAX    16384u
#define FILE_PIECE   65536u
#define HANDSHAKE_MS 10000u

struct held {
    struct held *next;
    int fd; /* -1: bytes */
    unsigned flags;
    off_t off;
    size_t len;
    char data[];
};

struct iop__stls {
    iop_tls *t;
    struct held *head, *tail;
    size_t held_bytes;
    iop_stream *hs_prev, *hs_next; /* on the context's handshake list */
    uint64_t hs_due;
    unsigned char in_hs_list, shut, again;
};

struct iop__stls_ctx {
    char plain[PLAIN_MAX];
    char piece[FILE_PIECE];
    iop_stream *hs_head, *hs_tail;
    iop_timer hs_timer;
    void (*on_fail)(void *arg, const iop_stream *s, int err);
    void *on_fail_arg;
};

/* ---- the handshake clock ---------------------------------------------- */

static void hs_tick(iop_timer *tm);

static void hs_unlink(iop_stream *s)
{
    struct iop__stls *x = s->tls;
    struct iop__stls_ctx *c = s->ctx->tls;
    if (!x->in_hs_list)
        return;
    if (x->hs_prev)
        x->hs_prev->tls->hs_next = x->hs_next;
    else
        c->hs_head = x->hs_next;
    if (x->hs_next)
        x->hs_next->tls->hs_prev = x->hs_prev;
    else
        c->hs_tail = x->hs_prev;
    x->hs_prev = x->hs_next = NULL;
    x->in_hs_list = 0;
    if (!c->hs_head)
        iop_timer_stop(&c->hs_timer);
}

static void hs_arm(iop_stream_ctx *ctx)
{
    struct iop__stls_ctx *c = ctx->tls;
    if (!c->hs_head)
        return;
    uint64_t now = iop_loop_now(ctx->loop), due = c->hs_head->tls->hs_due;
    iop_timer_stop(&c->hs_timer);
    (void)iop_timer_start(ctx->loop, &c->hs_timer, due > now ? due - now : 0, 0);
}

static void hs_link(iop_stream *s)
{
    struct iop__stls *x = s->tls;
    struct iop__stls_ctx *c = s->ctx->tls;
    unsigned idle = s->ctx->cfg.idle_timeout_ms;
    x->hs_due = iop_loop_now(s->ctx->loop) + (idle && idle < HANDSHAKE_MS ? idle : HANDSHAKE_MS);
    x->hs_prev = c->hs_tail;
    if (c->hs_tail)
        c->hs_tail->tls->hs_next = s;
    else
        c->hs_head = s;
    c->hs_tail = s;
    x->in_hs_list = 1;
    if (c->hs_head == s)
        hs_arm(s->ctx);
}

static void hs_tick(iop_timer *tm)
{
    iop_stream_ctx *ctx = tm->data;
    struct iop__stls_ctx *c = ctx->tls;
    uint64_t now = iop_loop_now(ctx->loop);
    while (c->hs_head && c->hs_head->tls->hs_due <= now) {
        iop_stream *s = c->hs_head;
        hs_unlink(s);
        if (c->on_fail)
            c->on_fail(c->on_fail_arg, s, -ETIMEDOUT);
        iop__stream_fail(s, -ETIMEDOUT);
    }
    hs_arm(ctx);
}

/* ---- setting up ------------------------------------------------------- */

static int ctx_part(iop_stream_ctx *ctx)
{
    if (ctx->tls)
        return 0;
    struct iop__stls_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    iop_timer_init(&c->hs_timer, hs_tick);
    c->hs_timer.data = ctx;
    ctx->tls = c;
    return 0;
}

void iop_stream_ctx_on_tls_fail(iop_stream_ctx *ctx,
                                void (*fn)(void *arg, const iop_stream *s, int err), void *arg)
{
    if (ctx_part(ctx) < 0)
        return; /* then the streams cannot have TLS either */
    ctx->tls->on_fail = fn;
    ctx->tls->on_fail_arg = arg;
}

int iop_stream_tls(iop_stream *s, iop_tls_ctx *tls, const char *server_name)
{
    if (!s || !tls || s->tls || s->whead || (s->flags & (SF_CLOSING | SF_FAILED)))
        return -EINVAL;
    int rc = ctx_part(s->ctx);
    if (rc < 0)
        return rc;
    struct iop__stls *x = calloc(1, sizeof *x);
    if (!x)
        return -ENOMEM;
    if ((rc = iop_tls_new(tls, server_name, &x->t)) < 0) {
        free(x);
        return rc;
    }
    s->tls = x;
    hs_link(s);
    if (!iop_tls_ctx_is_server(tls))
        iop__stream_pend(s); /* the ClientHello goes first, unasked */
    return 0;
}

const char *iop_stream_tls_why(const iop_stream *s)
{
    return s->tls ? iop_tls_why(s->tls->t) : NULL;
}

const char *iop_stream_tls_alpn(const iop_stream *s, size_t *len)
{
    *len = 0;
    return s->tls ? iop_tls_alpn(s->tls->t, len) : NULL;
}

static void held_free(struct held *h)
{
    if (h->fd >= 0 && (h->flags & IOP_SENDFILE_CLOSE))
        close(h->fd);
    free(h);
}

void iop__stls_closing(iop_stream *s)
{
    hs_unlink(s);
}

void iop__stls_free(iop_stream *s)
{
    struct iop__stls *x = s->tls;
    if (!x)
        return;
    hs_unlink(s);
    while (x->head) {
        struct held *h = x->head;
        x->head = h->next;
        held_free(h);
    }
    iop_tls_free(x->t);
    free(x);
    s->tls = NULL;
}

void iop__stls_ctx_free(iop_stream_ctx *ctx)
{
    if (!ctx->tls)
        return;
    iop_timer_stop(&ctx->tls->hs_timer);
    free(ctx->tls);
    ctx->tls = NULL;
}

/* ---- out -------------------------------------------------------------- */

/* What the transport has to send, into the queue (or the socket). */
static int flush_out(iop_stream *s)
{
    size_t len;
    const void *p;
    int rc = 0;
    while (rc >= 0 && (p = iop_tls_out(s->tls->t, &len)) != NULL) {
        struct iovec iov = {(void *)(uintptr_t)p, len};
        rc = iop__stream_writev_raw(s, &iov, 1);
        iop_tls_out_done(s->tls->t, len);
    }
    return rc < 0 ? rc : 0;
}

static int encrypt(iop_stream *s, const char *p, size_t n)
{
    while (n) {
        ssize_t w = iop_tls_write(s->tls->t, p, n);
        if (w < 0 && w != -EAGAIN)
            return (int)w;
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        }
        int rc = flush_out(s);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int hold(iop_stream *s, const char *p, size_t n, int fd, off_t off, unsigned flags)
{
    struct iop__stls *x = s->tls;
    struct held *h = malloc(sizeof *h + (fd < 0 ? n : 0));
    if (!h)
        return -ENOMEM;
    *h = (struct held){NULL, fd, flags, off, n};
    if (fd < 0) {
        memcpy(h->data, p, n);
        x->held_bytes += n;
    }
    if (x->tail)
        x->tail->next = h;
    else
        x->head = h;
    x->tail = h;
    return 0;
}

/* Whether writes must wait in `held` now. */
static int must_hold(const iop_stream *s)
{
    return s->tls->head || !iop_tls_handshake_done(s->tls->t);
}

int iop__stls_full_check(iop_stream *s)
{
    if (s->queued + s->tls->held_bytes > s->ctx->cfg.high_water) {
        s->flags |= SF_FULL;
        return 1;
    }
    return 0;
}

int iop__stls_writev(iop_stream *s, const struct iovec *iov, int iovcnt)
{
    int hold_it = must_hold(s), rc = 0;
    for (int i = 0; i < iovcnt && rc == 0; i++) {
        if (!iov[i].iov_len)
            continue;
        rc = hold_it ? hold(s, iov[i].iov_base, iov[i].iov_len, -1, 0, 0)
                     : encrypt(s, iov[i].iov_base, iov[i].iov_len);
    }
    if (rc == -ENOMEM)
        return rc;
    if (rc < 0) {
        iop__stream_fail_later(s, rc);
        return 0;
    }
    return iop__stls_full_check(s);
}

int iop__stls_sendfilev(iop_stream *s, const struct iovec *iov, int iovcnt, int fd, off_t off,
                        size_t len, unsigned flags)
{
    int rc = iop__stls_writev(s, iov, iovcnt);
    if (rc < 0 || (s->flags & SF_FAILED)) {
        if (flags & IOP_SENDFILE_CLOSE)
            close(fd);
        return rc;
    }
    if (!len) {
        if (flags & IOP_SENDFILE_CLOSE)
            close(fd);
        return rc;
    }
    /* The file is read later: it needs a descriptor of its own unless the
     * caller gave us this one. */
    if (!(flags & IOP_SENDFILE_CLOSE)) {
        int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (d < 0)
            return -errno;
        fd = d;
        flags |= IOP_SENDFILE_CLOSE;
    }
    if ((rc = hold(s, NULL, len, fd, off, flags)) < 0) {
        close(fd);
        return rc;
    }
    iop__stls_drained(s); /* start on it now if the queue has room */
    return iop__stls_full_check(s);
}

/* The head of `held` into the queue: bytes whole, a file one piece. */
static int pump_one(iop_stream *s)
{
    struct iop__stls *x = s->tls;
    struct held *h = x->head;
    int rc;
    if (h->fd < 0) {
        x->held_bytes -= h->len;
        rc = encrypt(s, h->data, h->len);
        h->len = 0;
    } else {
        size_t want = h->len < FILE_PIECE ? h->len : FILE_PIECE;
        ssize_t n;
        do
            n = pread(h->fd, s->ctx->tls->piece, want, h->off);
        while (n < 0 && errno == EINTR);
        if (n <= 0)
            return n < 0 ? -errno : -EIO; /* shorter than promised: truncated */
        h->off += n;
        h->len -= (size_t)n;
        rc = encrypt(s, s->ctx->tls->piece, (size_t)n);
    }
    if (h->len == 0) {
        x->head = h->next;
        if (!x->head)
            x->tail = NULL;
        held_free(h);
    }
    return rc;
}

void iop__stls_drained(iop_stream *s)
{
    struct iop__stls *x = s->tls;
    if (!iop_tls_handshake_done(x->t))
        return;
    while (x->head && !(s->flags & (SF_CLOSING | SF_FAILED)) &&
           s->queued <= s->ctx->cfg.low_water) {
        int rc = pump_one(s);
        if (rc < 0) {
            iop__stream_fail(s, rc);
            return;
        }
    }
    if (!x->head && x->shut == 1) {
        x->shut = 2;
        (void)iop_tls_shutdown(x->t);
        if (flush_out(s) < 0)
            iop__stream_fail(s, -ENOMEM);
    }
}

int iop__stls_held(const iop_stream *s)
{
    return s->tls->head != NULL || s->tls->shut == 1;
}

void iop__stls_shutdown(iop_stream *s)
{
    struct iop__stls *x = s->tls;
    if (x->shut)
        return;
    x->shut = 1;
    if (iop_tls_handshake_done(x->t))
        iop__stls_drained(s);
    else
        x->shut = 2; /* nothing was said: nothing to close */
}

/* ---- in --------------------------------------------------------------- */

/* Fail s for the transport's error. */
static void tls_fail(iop_stream *s, int rc)
{
    (void)flush_out(s); /* our alert, if the queue can still send it */
    iop__stream_fail(s, rc);
}

/* Drive the handshake: 1 done, 0 not yet (or s failed). */
static int handshake(iop_stream *s)
{
    struct iop__stls *x = s->tls;
    if (iop_tls_handshake_done(x->t))
        return 1;
    int rc = iop_tls_handshake(x->t);
    if (rc < 0) {
        struct iop__stls_ctx *c = s->ctx->tls;
        hs_unlink(s);
        if (c->on_fail)
            c->on_fail(c->on_fail_arg, s, rc);
        tls_fail(s, rc);
        return 0;
    }
    if (flush_out(s) < 0) {
        iop__stream_fail(s, -ENOMEM);
        return 0;
    }
    if (rc == 0)
        return 0;
    hs_unlink(s);
    iop__stls_drained(s); /* the writes that waited */
    return !(s->flags & (SF_CLOSING | SF_FAILED));
}

/* Plaintext to on_read while the user reads. */
static void read_plain(iop_stream *s)
{
    struct iop__stls *x = s->tls;
    char *buf = s->ctx->tls->plain;
    x->again = 0;
    while ((s->flags & (SF_READING | SF_CLOSING | SF_FAILED)) == SF_READING) {
        ssize_t n = iop_tls_read(x->t, buf, PLAIN_MAX);
        if (n == -EAGAIN)
            break;
        if (n < 0) {
            tls_fail(s, (int)n);
            return;
        }
        iop__stream_deliver_plain(s, n, buf);
        if (n == 0)
            return;
    }
    if (!(s->flags & SF_READING))
        x->again = 1;     /* more may be decrypted once reading starts again */
    if (flush_out(s) < 0) /* what reading produced: a key update's answer */
        iop__stream_fail(s, -ENOMEM);
}

void iop__stls_input(iop_stream *s, ssize_t n, const char *buf)
{
    struct iop__stls *x = s->tls;
    if (n < 0) {
        iop__stream_deliver_plain(s, n, buf);
        return;
    }
    if (n == 0)
        iop_tls_feed_eof(x->t);
    else if (iop_tls_feed(x->t, buf, (size_t)n) < 0) {
        iop__stream_fail(s, -ENOMEM);
        return;
    }
    if (handshake(s))
        read_plain(s);
}

void iop__stls_pending(iop_stream *s)
{
    struct iop__stls *x = s->tls;
    if (!iop_tls_handshake_done(x->t)) {
        (void)handshake(s); /* a client's first flight */
        return;
    }
    if (x->again && (s->flags & SF_READING))
        read_plain(s);
}

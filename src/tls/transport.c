/* transport.c - one connection's TLS over buffers, never a socket.
 *
 * The SSL reads and writes through one BIO of our own (both directions):
 * its read side takes from `in` (what iop_tls_feed() copied), its write
 * side appends to `out` (what iop_tls_out() shows).  A BIO_s_mem pair
 * would cost a second copy to drop sent bytes; ours just moves an offset.
 * Both buffers are freed whenever they empty, so an idle connection holds
 * only the SSL (whose record buffers SSL_MODE_RELEASE_BUFFERS releases).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls/tls_int.h"

struct buf {
    char *p;
    size_t head, len, cap; /* bytes p[head..len) */
};

struct iop_tls {
    SSL *ssl;
    iop_tls_ctx *ctx;
    const char *why;
    struct buf in, out;
    unsigned char hs_done, eof, shut_sent, failed;
};

static void buf_drop(struct buf *b, size_t n)
{
    b->head += n;
    if (b->head >= b->len) {
        free(b->p);
        *b = (struct buf){0};
    }
}

/* Room for n more bytes at b->p + b->len: 0 or -ENOMEM. */
static int buf_room(struct buf *b, size_t n)
{
    if (b->len + n > b->cap) {
        /* Move the live bytes down first: most of the time that is room. */
        if (b->head) {
            memmove(b->p, b->p + b->head, b->len - b->head);
            b->len -= b->head;
            b->head = 0;
        }
        if (b->len + n > b->cap) {
            size_t cap = b->cap ? b->cap : 4096;
            while (cap < b->len + n)
                cap *= 2;
            char *np = realloc(b->p, cap);
            if (!np)
                return -ENOMEM;
            b->p = np;
            b->cap = cap;
        }
    }
    return 0;
}

static int buf_add(struct buf *b, const void *p, size_t n)
{
    if (buf_room(b, n) < 0)
        return -ENOMEM;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

/* ---- the BIO ---------------------------------------------------------- */

static int bio_write(BIO *bio, const char *p, int n)
{
    iop_tls *t = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (buf_add(&t->out, p, (size_t)n) < 0)
        return -1;
    return n;
}

static int bio_read(BIO *bio, char *p, int n)
{
    iop_tls *t = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    size_t have = t->in.len - t->in.head;
    if (have == 0) {
        if (t->eof)
            return 0;
        BIO_set_retry_read(bio);
        return -1;
    }
    if ((size_t)n > have)
        n = (int)have;
    memcpy(p, t->in.p + t->in.head, (size_t)n);
    buf_drop(&t->in, (size_t)n);
    return n;
}

static long bio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    iop_tls *t = BIO_get_data(bio);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_EOF:
        return t->eof && t->in.len == t->in.head;
    case BIO_CTRL_PENDING:
        return (long)(t->in.len - t->in.head);
    case BIO_CTRL_WPENDING:
        return (long)(t->out.len - t->out.head);
    default:
        return 0;
    }
}

static int bio_create(BIO *bio)
{
    BIO_set_init(bio, 1);
    return 1;
}

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static void bio_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ioplex");
    if (!m)
        return;
    BIO_meth_set_write(m, bio_write);
    BIO_meth_set_read(m, bio_read);
    BIO_meth_set_ctrl(m, bio_ctrl);
    BIO_meth_set_create(m, bio_create);
    bio_method = m;
}

/* ---- errors ----------------------------------------------------------- */

/* r from an SSL_* call that failed: -EAGAIN (needs input), 0 (the peer
 * closed), or a fatal -errno with t->why set. */
static int fail(iop_tls *t, int r)
{
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (!t->eof)
            return -EAGAIN;
        t->why = "the peer closed the connection mid-record";
        e = SSL_ERROR_SYSCALL;
    }
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    if (e == SSL_ERROR_SSL) {
        unsigned long ec = ERR_peek_error();
        const char *s = ec ? ERR_reason_error_string(ec) : NULL;
        t->why = s ? s : "protocol error";
    } else if (!t->why) {
        t->why = t->eof ? "the peer closed the connection" : "internal error";
    }
    ERR_clear_error();
    t->failed = 1;
    return t->eof && !t->hs_done ? -ECONNRESET : -EPROTO;
}

/* ---- the transport ---------------------------------------------------- */

static int set_peer_name(SSL *ssl, const char *name, int verify)
{
    unsigned char ip[16];
    int is_ip = inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1;
    if (!is_ip && SSL_set_tlsext_host_name(ssl, name) != 1)
        return -ENOMEM;
    if (!verify)
        return 0;
    if (is_ip)
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1 ? 0 : -EINVAL;
    return SSL_set1_host(ssl, name) == 1 ? 0 : -ENOMEM;
}

int iop_tls_new(iop_tls_ctx *ctx, const char *server_name, iop_tls **out)
{
    pthread_once(&bio_once, bio_method_init);
    if (!bio_method)
        return -ENOMEM;
    if (ctx->is_server && server_name)
        return -EINVAL;
    iop_tls *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    SSL_CTX *sc = iop__tls_ctx_current(ctx);
    t->ssl = SSL_new(sc);
    SSL_CTX_free(sc);
    BIO *bio = t->ssl ? BIO_new(bio_method) : NULL;
    if (!bio) {
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return -ENOMEM;
    }
    BIO_set_data(bio, t);
    SSL_set_bio(t->ssl, bio, bio);
    int rc = 0;
    if (ctx->is_server) {
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
        if (server_name)
            rc = set_peer_name(t->ssl, server_name, !ctx->insecure);
    }
    if (rc < 0) {
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return rc;
    }
    iop__tls_ctx_ref(ctx);
    t->ctx = ctx;
    *out = t;
    return 0;
}

void iop_tls_free(iop_tls *t)
{
    if (!t)
        return;
    SSL_free(t->ssl);
    free(t->in.p);
    free(t->out.p);
    iop__tls_ctx_unref(t->ctx);
    free(t);
}

int iop_tls_feed(iop_tls *t, const void *cipher, size_t n)
{
    return n ? buf_add(&t->in, cipher, n) : 0;
}

void *iop_tls_feed_space(iop_tls *t, size_t want, size_t *cap)
{
    if (buf_room(&t->in, want) < 0)
        return NULL;
    *cap = t->in.cap - t->in.len;
    return t->in.p + t->in.len;
}

void iop_tls_feed_commit(iop_tls *t, size_t n)
{
    t->in.len += n;
    if (t->in.len == t->in.head)
        buf_drop(&t->in, 0); /* nothing came: do not hold the room */
}

void iop_tls_feed_eof(iop_tls *t)
{
    t->eof = 1;
}

int iop_tls_handshake(iop_tls *t)
{
    if (t->hs_done)
        return 1;
    if (t->failed)
        return -EPROTO;
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        t->hs_done = 1;
        return 1;
    }
    r = fail(t, r);
    if (r == -EAGAIN)
        return 0;
    if (r == 0) { /* close_notify before the handshake ended */
        t->why = "the peer closed the connection";
        t->failed = 1;
        return -ECONNRESET;
    }
    return r;
}

int iop_tls_handshake_done(const iop_tls *t)
{
    return t->hs_done;
}

ssize_t iop_tls_read(iop_tls *t, void *buf, size_t cap)
{
    if (!t->hs_done) {
        int r = iop_tls_handshake(t);
        if (r <= 0)
            return r == 0 ? -EAGAIN : r;
    }
    if (t->failed)
        return -EPROTO;
    ERR_clear_error();
    size_t got = 0;
    int r = SSL_read_ex(t->ssl, buf, cap, &got);
    if (r == 1)
        return (ssize_t)got;
    return fail(t, r);
}

ssize_t iop_tls_write(iop_tls *t, const void *buf, size_t n)
{
    if (!t->hs_done) {
        int r = iop_tls_handshake(t);
        if (r <= 0)
            return r == 0 ? -EAGAIN : r;
    }
    if (t->failed || t->shut_sent)
        return -EPIPE;
    size_t done = 0;
    while (done < n && t->out.len - t->out.head < IOP_TLS_OUT_MAX) {
        size_t room = IOP_TLS_OUT_MAX - (t->out.len - t->out.head);
        size_t take = n - done < room ? n - done : room;
        size_t w = 0;
        ERR_clear_error();
        if (SSL_write_ex(t->ssl, (const char *)buf + done, take, &w) != 1) {
            int r = fail(t, 0);
            if (done)
                return (ssize_t)done;
            return r == 0 ? -EPIPE : r;
        }
        done += w;
    }
    return done ? (ssize_t)done : -EAGAIN;
}

int iop_tls_shutdown(iop_tls *t)
{
    if (t->shut_sent || t->failed)
        return 0;
    t->shut_sent = 1;
    ERR_clear_error();
    /* 0: our close_notify went out and theirs has not come; that is all a
     * server waits for. */
    if (SSL_shutdown(t->ssl) < 0)
        ERR_clear_error();
    return 0;
}

const void *iop_tls_out(iop_tls *t, size_t *len)
{
    *len = t->out.len - t->out.head;
    return *len ? t->out.p + t->out.head : NULL;
}

void iop_tls_out_done(iop_tls *t, size_t n)
{
    buf_drop(&t->out, n);
}

size_t iop_tls_out_pending(const iop_tls *t)
{
    return t->out.len - t->out.head;
}

const char *iop_tls_why(const iop_tls *t)
{
    return t->why;
}

const char *iop_tls_alpn(const iop_tls *t, size_t *len)
{
    const unsigned char *p = NULL;
    unsigned l = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &l);
    *len = l;
    return l ? (const char *)p : NULL;
}

int iop_tls_resumed(const iop_tls *t)
{
    return SSL_session_reused(t->ssl);
}

const char *iop_tls_version(const iop_tls *t)
{
    return SSL_get_version(t->ssl);
}

SSL *iop_tls_ssl(iop_tls *t)
{
    return t->ssl;
}

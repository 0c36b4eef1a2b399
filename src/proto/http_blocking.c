/* http_blocking.c - HTTP as a blocking-style handler: one connection's
 * requests in a loop, for iterative, thread, fork and coro.
 *
 * Between requests the connection is marked idle, so a graceful stop ends
 * it at once; inside a head each wait gets what is left of the header
 * deadline as its timeout. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/http_srv.h"

struct bconn {
    iop_conn *c;
    struct http_worker *w;
    char *buf;
    size_t len, cap;
    char host[46]; /* the peer, for the access log: looked up once */
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* More bytes into the buffer: > 0, or <= 0 to end the connection.  A first
 * byte starts the head's clock (*start). */
static ssize_t fill(struct bconn *b, uint64_t *start)
{
    unsigned limit = b->w->http->cfg.header_timeout_ms;
    if (b->len == 0) {
        iop_conn_set_idle(b->c, 1);
        iop_conn_set_timeout(b->c, 0);
    } else {
        uint64_t t = now_ms(), due = *start + limit;
        if (t >= due)
            return -ETIMEDOUT;
        iop_conn_set_timeout(b->c, (unsigned)(due - t));
    }
    ssize_t n = iop_conn_recv(b->c, b->buf + b->len, b->cap - b->len);
    iop_conn_set_idle(b->c, 0);
    if (n > 0 && b->len == 0)
        *start = now_ms();
    if (n > 0)
        b->len += (size_t)n;
    return n;
}

/* Read one head: its length, or a negative status to answer, or 0 when the
 * connection ended (EOF, timeout, stop). */
static int read_head(struct bconn *b, struct http_req *req)
{
    size_t scan = 0;
    uint64_t start = now_ms();
    for (;;) {
        int rc = http_parse_head(b->buf, b->len, b->w->http->cfg.max_header, &scan, req);
        if (rc != 0)
            return rc;
        if (fill(b, &start) <= 0)
            return 0;
    }
}

static void consume(struct bconn *b, size_t n)
{
    memmove(b->buf, b->buf + n, b->len - n);
    b->len -= n;
}

/* Throw away a request body: 0, -1 to end the connection, or (chunked)
 * -400 / -413 to answer. */
static int skip_body(struct bconn *b, const struct http_req *req)
{
    uint64_t left = req->content_length > 0 ? (uint64_t)req->content_length : 0;
    struct http_chunked ch = {0};
    int chunked = req->chunked, done = 0;
    uint64_t start = now_ms();
    while (left || (chunked && !done)) {
        if (b->len == 0) {
            start = now_ms(); /* a body has no deadline of its own: idle rules */
            if (fill(b, &start) <= 0)
                return -1;
        }
        size_t k;
        if (left) {
            k = b->len < left ? b->len : (size_t)left;
            left -= k;
        } else {
            ssize_t r = http_chunked_skip(&ch, b->buf, b->len, HTTP_BODY_LIMIT, &done);
            if (r < 0)
                return (int)r;
            k = (size_t)r;
        }
        consume(b, k);
    }
    return 0;
}

/* A multipart body: each part's text, then its slice of the compressed
 * copy or of the file.  0 or -errno. */
static int send_parts(iop_conn *c, const struct http_resp *r)
{
    int rc = 0;
    for (int i = 0; i < r->nparts && rc == 0; i++) {
        const struct http_part *p = &r->parts[i];
        rc = iop_conn_sendall(c, r->body_alloc + p->text_off, p->text_len);
        if (rc == 0 && p->len)
            rc = r->z ? iop_conn_sendall(c, r->z->data + p->off, p->len)
                      : iop_conn_sendfile(c, r->fd, (off_t)p->off, p->len);
    }
    return rc;
}

/* Send one response: 0, or -1 when the connection must end. */
static int respond(struct bconn *b, const struct http_req *req, int err)
{
    struct http_resp r;
    int stopping = iop_server_stopping(iop_conn_server(b->c)) != 0;
    http_respond(b->w, req, err, stopping, &r);
    int rc = iop_conn_sendall(b->c, r.head, r.head_len);
    if (rc == 0 && r.body_len)
        rc = iop_conn_sendall(b->c, r.body, r.body_len);
    if (rc == 0 && r.nparts)
        rc = send_parts(b->c, &r);
    else if (rc == 0 && r.fd >= 0)
        rc = iop_conn_sendfile(b->c, r.fd, r.off, r.len);
    http_log(b->w, b->host, req, err, &r);
    int close = r.close;
    http_resp_done(b->w, &r);
    return rc < 0 || close ? -1 : 0;
}

/* A chunked request is answered once its body is read (413 when it is
 * too long): its head is kept aside meanwhile.  0, or -1 to end. */
static int chunked(struct bconn *b, size_t head_len)
{
    char *head = malloc(head_len);
    if (!head)
        return -1;
    memcpy(head, b->buf, head_len);
    consume(b, head_len);
    struct http_req req;
    size_t scan = 0;
    int err = http_parse_head(head, head_len, head_len + 1, &scan, &req) > 0 ? 0 : -400;
    if (!err)
        err = skip_body(b, &req);
    int rc = err == -1 ? -1 : respond(b, err ? NULL : &req, err);
    free(head);
    return rc;
}

static void serve(struct bconn *b)
{
    for (;;) {
        struct http_req req;
        int rc = read_head(b, &req);
        if (rc == 0)
            return;
        if (rc > 0 && req.chunked) {
            if (chunked(b, (size_t)rc) < 0)
                return;
            continue;
        }
        if (respond(b, rc > 0 ? &req : NULL, rc < 0 ? rc : 0) < 0)
            return;
        consume(b, (size_t)rc);
        if (skip_body(b, &req) < 0)
            return;
    }
}

static void handle(iop_conn *c)
{
    iop_http *http = iop_server_handler_ctx(iop_conn_server(c));
    struct http_worker local, *w = NULL;
    /* A coroutine shares its reactor thread's worker (and file cache).
     * Threads come and go, so a connection has a worker of its own (date,
     * log) but shares the process's file cache: a keep-alive client asking
     * for the same files again pays an fstat, not openat2 + fstat + close,
     * and a connection holds a file only while it sends one (a fork child,
     * one connection, has its copy of the cache). */
    if (iop_server_model(iop_conn_server(c)) == IOP_MODEL_CORO)
        w = http_worker_get(http, NULL);
    if (!w) {
        http_worker_local(&local, http);
        local.cache = 1; /* fstat on every hit: no loop iteration to share it */
        local.shared = &http->shared;
        w = &local;
    }
    struct bconn b = {.c = c, .w = w, .cap = http->cfg.max_header + 4096};
    http_nodelay(iop_conn_fd(c));
    if (http->cfg.access_log)
        http_peer_name(iop_conn_fd(c), b.host, sizeof b.host);
    if ((b.buf = malloc(b.cap)))
        serve(&b);
    free(b.buf);
    if (w == &local)
        http_worker_fini(&local);
}

void http_blocking_handler(struct iop_handler *h)
{
    h->handle = handle;
}

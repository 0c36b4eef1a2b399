/* http_event.c - HTTP on the reactor: event-style callbacks on streams.
 *
 * Requests are parsed straight from the stream's read buffer; a response
 * is queued before the next request is looked at, so pipelined requests
 * are answered in order.  A connection between requests holds no state of
 * ours at all (stream data NULL): its per-connection record exists only
 * while a head is incomplete, a body is being thrown away, or reading is
 * paused because the write queue is full.
 *
 * Slowloris: connections inside a head sit on their worker's list in the
 * order their heads began; one timer closes those past the header
 * deadline. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "proto/http_srv.h"

struct hconn {
    struct http_worker *w;
    iop_stream *s;
    char *buf; /* bytes received and not yet handled */
    size_t len, cap;
    size_t scan;               /* http_parse_head's resume point */
    uint64_t body_left;        /* Content-Length bytes still to throw away */
    struct http_chunked ch;    /* a chunked body being thrown away */
    char *held;                /* the head of a chunked request, answered */
    size_t held_len;           /* once its body is read (413 if too long) */
    uint64_t head_at;          /* loop ms when the current head began */
    struct hconn *prev, *next; /* the worker's deadline list */
    unsigned chunked : 1, in_head : 1, listed : 1, paused : 1, stopping : 1, done : 1;
};

static struct http_worker *worker_of(iop_stream *s)
{
    iop_http *http = iop_server_handler_ctx(iop_stream_server(s));
    return http_worker_get(http, iop_stream_loop(s));
}

/* ---- header deadlines ---------------------------------------------------- */

static void unlist(struct hconn *hc)
{
    struct http_worker *w = hc->w;
    if (!hc->listed)
        return;
    if (hc->prev)
        hc->prev->next = hc->next;
    else
        w->to_head = hc->next;
    if (hc->next)
        hc->next->prev = hc->prev;
    else
        w->to_tail = hc->prev;
    hc->prev = hc->next = NULL;
    hc->listed = 0;
    if (!w->to_head)
        iop_timer_stop(&w->to_timer);
}

static void deadline_cb(iop_timer *t);

static void arm(struct http_worker *w)
{
    if (!w->to_head)
        return;
    uint64_t due = w->to_head->head_at + w->http->cfg.header_timeout_ms;
    uint64_t now = iop_loop_now(w->loop);
    (void)iop_timer_start(w->loop, &w->to_timer, due > now ? due - now : 0, 0);
}

static void deadline_cb(iop_timer *t)
{
    struct http_worker *w = t->data;
    uint64_t now = iop_loop_now(w->loop), limit = w->http->cfg.header_timeout_ms;
    while (w->to_head && w->to_head->head_at + limit <= now) {
        struct hconn *hc = w->to_head;
        unlist(hc);
        hc->done = 1;
        iop_stream_close(hc->s);
    }
    arm(w);
}

static void list(struct hconn *hc)
{
    struct http_worker *w = hc->w;
    if (hc->listed)
        return;
    if (!w->to_timer.cb) {
        iop_timer_init(&w->to_timer, deadline_cb);
        w->to_timer.data = w;
    }
    hc->prev = w->to_tail;
    if (w->to_tail)
        w->to_tail->next = hc;
    else
        w->to_head = hc;
    w->to_tail = hc;
    hc->listed = 1;
    if (!iop_timer_active(&w->to_timer))
        arm(w);
}

void http_event_worker_fini(struct http_worker *w)
{
    w->to_head = w->to_tail = NULL;
}

/* ---- requests ------------------------------------------------------------ */

/* The peer's name for the access log, looked up once per connection. */
static const char *peer_of(struct http_worker *w, iop_stream *s)
{
    int fd = iop_stream_fd(s);
    if (!w->http->cfg.access_log || fd < 0)
        return "-";
    if ((size_t)fd >= w->npeers) {
        size_t n = w->npeers ? w->npeers : 64;
        while (n <= (size_t)fd)
            n *= 2;
        struct http_peer *p = realloc(w->peers, n * sizeof *p);
        if (!p)
            return "-";
        memset(p + w->npeers, 0, (n - w->npeers) * sizeof *p);
        w->peers = p;
        w->npeers = n;
    }
    struct http_peer *p = &w->peers[fd];
    if (p->owner != s) {
        http_peer_name(fd, p->name, sizeof p->name);
        p->owner = s;
    }
    return p->name;
}

/* A multipart body: per part its text (after the head, for the first)
 * and its slice, lent from memory (a compressed copy, a mapped file) or
 * sent from the file; then the closing boundary.  As queue_resp, but a
 * part refused after the first was queued is -ECONNABORTED: the response
 * is cut, the connection must end. */
static int send_parts(iop_stream *s, const struct http_resp *r)
{
    const char *map = r->ent ? http_entry_map(r->ent) : NULL;
    const char *mem = r->z ? r->z->data : map;
    int rc = 0;
    for (int i = 0; i < r->nparts; i++) {
        const struct http_part *p = &r->parts[i];
        struct iovec iov[2] = {{r->head, r->head_len}, {r->body_alloc + p->text_off, p->text_len}};
        struct iovec *v = i ? iov + 1 : iov;
        int cnt = i ? 1 : 2, k;
        if (!p->len) {
            k = iop_stream_writev(s, v, cnt);
        } else if (r->z) {
            http_zcopy_hold(r->z);
            k = iop_stream_writev_ref(s, v, cnt, mem + p->off, p->len, http_zcopy_release, r->z);
        } else if (map) {
            http_entry_hold(r->ent);
            k = iop_stream_writev_ref(s, v, cnt, map + p->off, p->len, http_entry_release, r->ent);
        } else {
            k = iop_stream_sendfilev(s, v, cnt, r->fd, (off_t)p->off, p->len, IOP_SENDFILE_DUP);
        }
        if (k < 0)
            return i ? -ECONNABORTED : k;
        rc = k > rc ? k : rc;
    }
    return rc;
}

/* Queue r: 0, 1 (the queue is full) or -errno, having sent nothing. */
static int queue_resp(iop_stream *s, struct http_resp *r)
{
    struct iovec iov[2] = {{r->head, r->head_len}, {(void *)(uintptr_t)r->body, r->body_len}};
    if (r->nparts)
        return send_parts(s, r);
    const char *map = r->ent ? http_entry_map(r->ent) : NULL;
    if (map) {
        http_entry_hold(r->ent);
        return iop_stream_writev_ref(s, iov, 1, map + r->off, r->len, http_entry_release, r->ent);
    }
    if (r->z && r->body_len) { /* a compressed copy: lent, as a mapping is */
        http_zcopy_hold(r->z);
        return iop_stream_writev_ref(s, iov, 1, r->body, r->body_len, http_zcopy_release, r->z);
    }
    if (r->fd >= 0)
        return iop_stream_sendfilev(s, iov, 1, r->fd, r->off, r->len, IOP_SENDFILE_DUP);
    return iop_stream_writev(s, iov, r->body_len ? 2 : 1);
}

/* Send the response to one head.  0: go on; 1: the queue is full, pause;
 * -1: the stream is ending or closed. */
static int respond(struct hconn *hc, const struct http_req *req, int err)
{
    struct http_worker *w = hc->w;
    struct http_resp r;
    http_respond(w, req, err, hc->stopping, &r);
    int rc = queue_resp(hc->s, &r);
    if (rc == -EMFILE || rc == -ENFILE || rc == -ENOMEM) {
        /* The stream had no room to keep the response (a descriptor for
         * its file, memory for its bytes) and sent none of it: say so. */
        http_resp_done(w, &r);
        http_respond_unavailable(w, req, &r);
        rc = queue_resp(hc->s, &r);
    }
    http_log(w, peer_of(w, hc->s), req, err, &r);
    int close = r.close;
    http_resp_done(w, &r);
    /* Not even the 503 went: the responses queued before it still do. */
    if (rc < 0 || close) {
        iop_stream_end(hc->s);
        return -1;
    }
    return rc;
}

/* Answer the held head of a chunked request whose body ended (err 0) or
 * broke (-400, -413).  As respond(). */
static int respond_held(struct hconn *hc, int err)
{
    struct http_req req;
    size_t scan = 0;
    int rc = http_parse_head(hc->held, hc->held_len, hc->held_len + 1, &scan, &req);
    int sent = respond(hc, rc > 0 ? &req : NULL, err ? err : rc > 0 ? 0 : -400);
    free(hc->held);
    hc->held = NULL;
    return sent;
}

/* Throw away body bytes: the bytes used, or -1 when the stream ends. */
static ssize_t skip_body(struct hconn *hc, const char *p, size_t n)
{
    if (hc->body_left) {
        size_t k = n < hc->body_left ? n : (size_t)hc->body_left;
        hc->body_left -= k;
        return (ssize_t)k;
    }
    int done = 0;
    ssize_t k = http_chunked_skip(&hc->ch, p, n, HTTP_BODY_LIMIT, &done);
    if (k < 0 || done)
        hc->chunked = 0;
    if (k < 0) {
        respond_held(hc, (int)k); /* 400 or 413, then close */
        return -1;
    }
    if (done) {
        int sent = respond_held(hc, 0);
        if (sent < 0)
            return -1;
        if (sent == 1) {
            hc->paused = 1;
            (void)iop_stream_read_stop(hc->s);
        }
    }
    return k;
}

/* Handle what p holds: the bytes used (the rest waits for more input or
 * for the queue to drain).  Sets hc->done when the stream is finished. */
static size_t feed(struct hconn *hc, const char *p, size_t n)
{
    size_t off = 0;
    while (off < n && !hc->done) {
        if (hc->body_left || hc->chunked) {
            ssize_t k = skip_body(hc, p + off, n - off);
            if (k < 0) {
                hc->done = 1;
                break;
            }
            off += (size_t)k;
            continue;
        }
        if (hc->paused)
            break;
        struct http_req req;
        int rc = http_parse_head(p + off, n - off, hc->w->http->cfg.max_header, &hc->scan, &req);
        if (rc == 0) {
            if (!hc->in_head) {
                hc->in_head = 1;
                hc->head_at = iop_loop_now(hc->w->loop);
            }
            break;
        }
        hc->scan = 0;
        hc->in_head = 0;
        if (rc > 0 && req.chunked) {
            /* Its size is known only at its end: answer then (413 if over
             * the limit), so hold on to the head. */
            if (!(hc->held = malloc((size_t)rc))) {
                iop_stream_end(hc->s);
                hc->done = 1;
                break;
            }
            memcpy(hc->held, p + off, (size_t)rc);
            hc->held_len = (size_t)rc;
            hc->chunked = 1;
            memset(&hc->ch, 0, sizeof hc->ch);
            off += (size_t)rc;
            continue;
        }
        int sent = respond(hc, rc > 0 ? &req : NULL, rc < 0 ? rc : 0);
        if (sent < 0) {
            hc->done = 1;
            break;
        }
        off += (size_t)rc;
        if (req.content_length > 0)
            hc->body_left = (uint64_t)req.content_length;
        if (sent == 1) {
            hc->paused = 1;
            (void)iop_stream_read_stop(hc->s);
        }
    }
    return off;
}

static int dirty(const struct hconn *hc)
{
    return hc->len || hc->body_left || hc->chunked || hc->paused || hc->stopping || hc->in_head;
}

static int keep(struct hconn *hc, const char *p, size_t n)
{
    hc->len = n;
    if (n == 0)
        return 0;
    if (n > hc->cap) {
        size_t cap = n < 1024 ? 1024 : n;
        char *b = realloc(hc->buf, cap);
        if (!b)
            return -ENOMEM;
        hc->buf = b;
        hc->cap = cap;
    }
    memmove(hc->buf, p, n);
    return 0;
}

/* After feeding: keep the record (and the unused bytes) only if needed.
 * Out of memory here (and wherever a connection's state cannot grow), the
 * connection ends: what is queued is sent first, so no response that went
 * out in part is cut short. */
static void settle(struct hconn *hc, struct hconn *heap)
{
    if (hc->done) {
        if (heap)
            unlist(heap);
        return;
    }
    if (!dirty(hc)) {
        if (heap) {
            unlist(heap);
            iop_stream_set_data(hc->s, NULL);
            free(heap->buf);
            free(heap);
        }
        return;
    }
    if (!heap) {
        if (!(heap = malloc(sizeof *heap))) {
            iop_stream_end(hc->s);
            return;
        }
        *heap = *hc;
        iop_stream_set_data(hc->s, heap);
    }
    if (heap->in_head)
        list(heap);
    else
        unlist(heap);
}

static void on_data(iop_stream *s, const char *buf, size_t n)
{
    struct hconn *heap = iop_stream_data(s);
    if (!heap) {
        /* The common case: nothing pending, parse in place. */
        struct hconn hc = {.w = worker_of(s), .s = s};
        size_t used = feed(&hc, buf, n);
        if (!hc.done && used < n && keep(&hc, buf + used, n - used) < 0) {
            free(hc.buf);
            iop_stream_end(s);
            return;
        }
        settle(&hc, NULL);
        if (hc.done || !iop_stream_data(s)) {
            free(hc.buf);
            free(hc.held);
        }
        return;
    }
    if (heap->len + n > heap->cap) {
        size_t cap = heap->len + n > 2 * heap->cap ? heap->len + n : 2 * heap->cap;
        char *b = realloc(heap->buf, cap);
        if (!b) {
            iop_stream_end(s);
            return;
        }
        heap->buf = b;
        heap->cap = cap;
    }
    memcpy(heap->buf + heap->len, buf, n);
    heap->len += n;
    size_t used = feed(heap, heap->buf, heap->len);
    if (!heap->done)
        (void)keep(heap, heap->buf + used, heap->len - used);
    settle(heap, heap);
}

static void on_drain(iop_stream *s)
{
    struct hconn *hc = iop_stream_data(s);
    if (!hc || !hc->paused)
        return;
    hc->paused = 0;
    size_t used = feed(hc, hc->buf, hc->len);
    if (!hc->done) {
        (void)keep(hc, hc->buf + used, hc->len - used);
        if (!hc->paused)
            (void)iop_stream_read_start(s);
    }
    settle(hc, hc);
}

/* Responses are written whole (a head with MSG_MORE before its file), so
 * Nagle only ever delays the last segment of one response behind the ACK
 * of another: pipelined answers would wait for the client's delayed ACK. */
void http_nodelay(int fd)
{
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* Unix: no-op */
}

static void on_open(iop_stream *s)
{
    http_nodelay(iop_stream_fd(s));
}

static void on_stop(iop_stream *s)
{
    struct hconn *hc = iop_stream_data(s);
    if (!hc || !(hc->in_head || hc->body_left || hc->chunked || hc->paused)) {
        iop_stream_end(s); /* between requests: send what is queued, close */
        return;
    }
    hc->stopping = 1; /* the request in flight is answered, then close */
}

static void on_close(iop_stream *s)
{
    struct http_worker *w = worker_of(s);
    int fd = iop_stream_fd(s); /* closed by now, but still its number */
    if (w && fd >= 0 && (size_t)fd < w->npeers && w->peers[fd].owner == s)
        w->peers[fd].owner = NULL;
    struct hconn *hc = iop_stream_data(s);
    if (!hc)
        return;
    unlist(hc);
    free(hc->held);
    free(hc->buf);
    free(hc);
}

void http_event_handler(struct iop_handler *h)
{
    h->on_open = on_open;
    h->on_data = on_data;
    h->on_drain = on_drain;
    h->on_stop = on_stop;
    h->on_close = on_close;
}

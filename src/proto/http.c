/* http.c - the HTTP/1.1 static file server: the server object and the
 * response to one request (both handler styles share it); the workers and
 * their open-file cache are http_cache.c's. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "proto/http_srv.h"

/* ---- the server object ---------------------------------------------------- */

int iop_http_new(const struct iop_http_config *cfg, iop_http **out)
{
    *out = NULL;
    if (!cfg || !cfg->root)
        return -EINVAL;
    int fd = open(cfg->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    iop_http *h = calloc(1, sizeof *h);
    if (!h) {
        close(fd);
        return -ENOMEM;
    }
    h->rootfd = fd;
    h->cfg = *cfg;
    if (!h->cfg.max_header)
        h->cfg.max_header = 8192;
    if (!h->cfg.header_timeout_ms)
        h->cfg.header_timeout_ms = 10000;
    if (!h->cfg.compress_max)
        h->cfg.compress_max = 1u << 20;
    if (!h->cfg.compress_memory)
        h->cfg.compress_memory = 64u << 20;
    int rc = http_headers_init(h);
    if (rc == 0)
        rc = http_zcache_new(h);
    if (rc < 0) {
        http_headers_fini(h);
        close(fd);
        free(h);
        return rc;
    }
    pthread_mutex_init(&h->lock, NULL);
    for (size_t i = 0; i < HTTP_FC_STRIPES; i++)
        pthread_mutex_init(&h->shared.locks[i], NULL);
    *out = h;
    return 0;
}

void iop_http_handler(iop_http *http, struct iop_handler *h)
{
    memset(h, 0, sizeof *h);
    http_event_handler(h);
    http_blocking_handler(h);
    h->ctx = http;
}

void iop_http_free(iop_http *http)
{
    if (!http)
        return;
    struct http_worker *w = http->workers;
    while (w) {
        struct http_worker *next = w->next;
        http_worker_fini(w);
        free(w);
        w = next;
    }
    for (size_t i = 0; i < HTTP_FC_SLOTS; i++)
        if (http->shared.slots[i])
            http_entry_release(http->shared.slots[i]);
    for (size_t i = 0; i < HTTP_FC_STRIPES; i++)
        pthread_mutex_destroy(&http->shared.locks[i]);
    pthread_mutex_destroy(&http->lock);
    http_headers_fini(http);
    http_zcache_free(http);
    close(http->rootfd);
    free(http);
}

/* ---- building a response --------------------------------------------------- */

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 416:
        return "Range Not Satisfiable";
    case 431:
        return "Request Header Fields Too Large";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Internal Server Error";
    }
}

static void put(struct http_resp *r, const char *s, size_t n)
{
    if (n == 0)
        return; /* s may be NULL: no configured headers */
    if (r->head_len + n > r->head_cap)
        n = r->head_cap - r->head_len; /* cannot happen: heads are sized */
    memcpy(r->head + r->head_len, s, n);
    r->head_len += n;
}

static void puts_(struct http_resp *r, const char *s)
{
    put(r, s, strlen(s));
}

static void putu(struct http_resp *r, uint64_t v)
{
    char b[24];
    int i = sizeof b;
    do
        b[--i] = (char)('0' + v % 10);
    while (v /= 10);
    put(r, b + i, sizeof b - (size_t)i);
}

static const char *date_now(struct http_worker *w)
{
    time_t t = time(NULL);
    if (t != w->date_t) {
        w->date_t = t;
        http_date(t, w->date);
    }
    return w->date;
}

static void head_begin(struct http_worker *w, struct http_resp *r, int status)
{
    r->status = status;
    r->head_len = 0;
    puts_(r, "HTTP/1.1 ");
    putu(r, (uint64_t)status);
    puts_(r, " ");
    puts_(r, reason(status));
    puts_(r, "\r\nServer: ioplex\r\nDate: ");
    put(r, date_now(w), HTTP_DATE_LEN);
    puts_(r, "\r\n");
}

static void head_end(struct http_resp *r, const struct http_req *req)
{
    if (r->close)
        puts_(r, "Connection: close\r\n");
    else if (req && req->minor == 0)
        puts_(r, "Connection: keep-alive\r\n");
    put(r, r->extra, r->extra_len);
    puts_(r, "\r\n");
}

int http_head_reserve(struct http_resp *r, size_t need)
{
    need += r->head_extra;
    if (need <= r->head_cap)
        return 0;
    char *big = malloc(need);
    if (!big)
        return -ENOMEM;
    if (r->head != r->small)
        free(r->head);
    r->head = big;
    r->head_cap = need;
    return 0;
}

void http_head_begin(struct http_worker *w, struct http_resp *r, int status)
{
    head_begin(w, r, status);
}

void http_head_end(struct http_resp *r, const struct http_req *req)
{
    head_end(r, req);
}

void http_put(struct http_resp *r, const char *s, size_t n)
{
    put(r, s, n);
}

void http_puts(struct http_resp *r, const char *s)
{
    puts_(r, s);
}

static void length(struct http_resp *r, uint64_t n)
{
    puts_(r, "Content-Length: ");
    putu(r, n);
    puts_(r, "\r\n");
}

/* Statuses after which the connection cannot go on: the request's end is
 * unknown, or the client broke the protocol. */
static int fatal(int status)
{
    return status == 400 || status == 413 || status == 414 || status == 431 || status == 505;
}

static const char html_type[] = "Content-Type: text/html; charset=utf-8\r\n";

/* extra: NULL or header lines (with their CRLF) to add. */
static void error_page_x(struct http_worker *w, struct http_resp *r, const struct http_req *req,
                         int status, const char *extra)
{
    char body[256];
    int n = snprintf(body, sizeof body,
                     "<!DOCTYPE html>\n<html><head><title>%d %s</title></head>"
                     "<body><h1>%d %s</h1></body></html>\n",
                     status, reason(status), status, reason(status));
    if (!(r->body_alloc = malloc((size_t)n)))
        n = 0;
    else
        memcpy(r->body_alloc, body, (size_t)n);
    head_begin(w, r, status);
    if (status == 405)
        puts_(r, w->http->cfg.cors ? "Allow: GET, HEAD, OPTIONS\r\n" : "Allow: GET, HEAD\r\n");
    if (extra)
        puts_(r, extra);
    puts_(r, html_type);
    length(r, (uint64_t)n);
    if (fatal(status))
        r->close = 1;
    head_end(r, req);
    if (!req || req->method != HTTP_M_HEAD) {
        r->body = r->body_alloc;
        r->body_len = (size_t)n;
        r->log_bytes = (uint64_t)n;
    }
}

static void error_page(struct http_worker *w, struct http_resp *r, const struct http_req *req,
                       int status)
{
    error_page_x(w, r, req, status, NULL);
}

void http_error_page(struct http_worker *w, struct http_resp *r, const struct http_req *req,
                     int status)
{
    error_page_x(w, r, req, status, NULL);
}

void http_file_headers(struct http_worker *w, struct http_resp *r, const struct fentry *e)
{
    puts_(r, "Last-Modified: ");
    puts_(r, e->lastmod);
    puts_(r, "\r\nETag: ");
    put(r, e->etag, e->etag_len);
    puts_(r, "\r\n");
    put(r, w->http->file_extra, w->http->file_extra_len);
}

static int not_modified(const struct http_req *req, const struct fentry *e)
{
    if (req->if_none_match.p) {
        int hit = http_etag_match(req->if_none_match.p, req->if_none_match.n, e->etag, e->etag_len);
        for (unsigned i = 0; !hit && i < req->n_inm_more; i++)
            hit = http_etag_match(req->inm_more[i].p, req->inm_more[i].n, e->etag, e->etag_len);
        return hit;
    }
    time_t t;
    return req->if_modified_since.p &&
           http_date_parse(req->if_modified_since.p, req->if_modified_since.n, &t) == 0 &&
           e->st.st_mtime <= t;
}

/* A compressed copy seen as a file: its size and ETag, the file's dates. */
static const struct fentry *zview(const struct fentry *e, const struct http_zcopy *z,
                                  struct fentry *view)
{
    if (!z)
        return e;
    /* Field by field: e may be shared, and its refs change under us. */
    memset(view, 0, sizeof *view);
    view->st = e->st;
    view->mime = e->mime;
    memcpy(view->lastmod, e->lastmod, sizeof view->lastmod);
    view->st.st_size = (off_t)z->len;
    memcpy(view->etag, z->etag, z->etag_len + 1);
    view->etag_len = z->etag_len;
    return view;
}

static void rep_release(struct fentry *e, struct http_zcopy *z)
{
    http_entry_release(e);
    if (z)
        http_zcopy_release(z);
}

static void serve_file(struct http_worker *w, struct http_resp *r, const struct http_req *req,
                       struct fentry *file)
{
    const char *hdrs;
    struct http_zcopy *z;
    struct fentry *e, view;
    if (http_encoding_pick(w, req, file, &e, &hdrs, &z) < 0) {
        error_page_x(w, r, req, 406, hdrs);
        return;
    }
    const struct fentry *v = zview(e, z, &view); /* the representation sent */
    uint64_t size = (uint64_t)v->st.st_size, first = 0, last = size ? size - 1 : 0;
    int range = 0;
    if (not_modified(req, v)) {
        head_begin(w, r, 304);
        http_file_headers(w, r, v);
        puts_(r, hdrs);
        head_end(r, req);
        rep_release(e, z);
        return;
    }
    /* If-Range: a client resuming a copy of another version must get the
     * whole file, never bytes of this one spliced onto its own. */
    int ranged = req->range.p &&
                 (!req->if_range.p || http_if_range(req->if_range.p, req->if_range.n, v->etag,
                                                    v->etag_len, v->st.st_mtime, time(NULL)));
    struct http_byterange rg[HTTP_RANGES_MAX];
    if (ranged && (range = http_ranges(req->range.p, req->range.n, size, rg)) > 1) {
        http_serve_parts(w, r, req, e, v, z, hdrs, rg, range);
        return;
    }
    if (range == 1) {
        first = rg[0].first;
        last = rg[0].last;
    }
    if (range < 0) {
        char cr[64];
        snprintf(cr, sizeof cr, "Content-Range: bytes */%llu\r\n", (unsigned long long)size);
        rep_release(e, z);
        error_page_x(w, r, req, 416, cr); /* no Vary: 416 is not cached */
        return;
    }
    uint64_t n = size ? last - first + 1 : 0;
    head_begin(w, r, range ? 206 : 200);
    puts_(r, "Content-Type: ");
    puts_(r, e->mime);
    puts_(r, "\r\n");
    length(r, n);
    http_file_headers(w, r, v);
    puts_(r, hdrs);
    puts_(r, "Accept-Ranges: bytes\r\n");
    if (range) {
        puts_(r, "Content-Range: bytes ");
        putu(r, first);
        puts_(r, "-");
        putu(r, last);
        puts_(r, "/");
        putu(r, size);
        puts_(r, "\r\n");
    }
    head_end(r, req);
    if (req->method == HTTP_M_HEAD || n == 0) {
        rep_release(e, z);
        return;
    }
    r->log_bytes = n;
    if (z) { /* from memory: the copy is held until sent */
        http_entry_release(e);
        r->z = z;
        r->body = z->data + first;
        r->body_len = (size_t)n;
        return;
    }
    r->ent = e;
    r->fd = e->fd;
    r->off = (off_t)first;
    r->len = (size_t)n;
    r->log_bytes = n;
}

static int status_of(int err)
{
    switch (err) {
    case -ENOENT:
    case -ENOTDIR:
    case -EXDEV: /* a symlink or ".." that leads out: as if it were not there */
    case -ELOOP:
        return 404;
    case -EACCES:
    case -EPERM:
        return 403;
    case -ENAMETOOLONG:
        return 414;
    case -EMFILE:
    case -ENFILE:
    case -ENOMEM:
        return 503;
    default:
        return 500;
    }
}

/* Built from the resolved path, never the target's bytes: "//evil.example"
 * must not become a Location a browser reads as another host. */
static void redirect(struct http_worker *w, struct http_resp *r, const struct http_req *req,
                     const char *rel, struct http_str query)
{
    if (http_head_reserve(r, 512 + http_dir_location(rel, &query, NULL, 0)) < 0) {
        error_page(w, r, req, 503);
        return;
    }
    head_begin(w, r, 301);
    puts_(r, "Location: ");
    r->head_len += http_dir_location(rel, &query, r->head + r->head_len, r->head_cap - r->head_len);
    puts_(r, "\r\n");
    puts_(r, html_type);
    length(r, 0);
    head_end(r, req);
}

static void listing(struct http_worker *w, struct http_resp *r, const struct http_req *req,
                    const char *rel, struct http_str query, struct fentry *dir)
{
    int rc;
    http_listing(w, r, req, rel, query, dir->fd, &rc);
    http_entry_release(dir);
    if (rc < 0)
        error_page(w, r, req, status_of(rc));
}

static void directory(struct http_worker *w, struct http_resp *r, const struct http_req *req,
                      const char *rel, struct http_str query, struct fentry *dir)
{
    char index[HTTP_PATH_BYTES + 16];
    snprintf(index, sizeof index, "%s%sindex.html", rel, *rel ? "/" : "");
    struct fentry *e;
    int rc = http_entry_get(w, index, &e);
    if (rc == 0 && S_ISREG(e->st.st_mode)) {
        http_entry_release(dir);
        serve_file(w, r, req, e);
        return;
    }
    if (rc == 0)
        http_entry_release(e);
    else if (rc != -ENOENT) {
        http_entry_release(dir);
        error_page(w, r, req, status_of(rc));
        return;
    }
    if (w->http->cfg.no_listing) {
        http_entry_release(dir);
        error_page(w, r, req, 403);
        return;
    }
    listing(w, r, req, rel, query, dir);
}

static void serve_target(struct http_worker *w, struct http_resp *r, const struct http_req *req)
{
    struct http_str path, query;
    char rel[HTTP_PATH_BYTES];
    int dir_form = 0, rc;
    if (http_target_split(req->target.p, req->target.n, &path, &query) < 0) {
        error_page(w, r, req, 400);
        return;
    }
    if ((rc = http_path_resolve(path.p, path.n, rel, sizeof rel, &dir_form)) < 0) {
        error_page(w, r, req, -rc);
        return;
    }
    struct fentry *e;
    if ((rc = http_entry_get(w, rel, &e)) < 0) {
        error_page(w, r, req, status_of(rc));
        return;
    }
    if (S_ISDIR(e->st.st_mode)) {
        if (!dir_form) {
            http_entry_release(e);
            redirect(w, r, req, rel, query);
        } else {
            directory(w, r, req, rel, query, e);
        }
    } else if (S_ISREG(e->st.st_mode) && dir_form && *rel) {
        http_entry_release(e); /* "/file/": a file is not a directory */
        error_page(w, r, req, 404);
    } else if (S_ISREG(e->st.st_mode)) {
        serve_file(w, r, req, e);
    } else {
        http_entry_release(e); /* a device, a fifo, a socket: never opened for reading */
        error_page(w, r, req, 403);
    }
}

static int keep_alive(const struct http_req *req)
{
    /* A 1.0 client sending chunked may not frame the body as we read it
     * (RFC 9112 §6.1): do not trust the bytes after it. */
    if (req->conn_close || (req->chunked && req->minor == 0))
        return 0;
    return req->minor >= 1 || req->conn_keep;
}

/* An empty response with room for the configured headers: 0, or -ENOMEM
 * with the small head and none of them (the bare error fits). */
static int resp_init(struct http_worker *w, struct http_resp *r)
{
    memset(r, 0, offsetof(struct http_resp, small));
    r->head = r->small;
    r->head_cap = sizeof r->small;
    r->fd = -1;
    r->extra = w->http->extra;
    r->extra_len = w->http->extra_len;
    r->head_extra = w->http->extra_len + w->http->file_extra_len;
    if (http_head_reserve(r, sizeof r->small) == 0)
        return 0;
    r->extra_len = r->head_extra = 0;
    return -ENOMEM;
}

void http_respond(struct http_worker *w, const struct http_req *req, int err, int stopping,
                  struct http_resp *r)
{
    if (resp_init(w, r) < 0) {
        r->close = 1;
        error_page(w, r, NULL, 503);
        return;
    }
    if (err < 0) {
        r->close = 1;
        error_page(w, r, NULL, -err);
        return;
    }
    r->close = stopping || !keep_alive(req);
    if (req->content_length > (int64_t)HTTP_BODY_LIMIT) {
        r->close = 1;
        error_page(w, r, req, 413);
    } else if (req->method == HTTP_M_UNKNOWN) {
        error_page(w, r, req, 501);
    } else if (req->method == HTTP_M_OPTIONS && w->http->cfg.cors) {
        http_options(w, r, req);
    } else if (req->method == HTTP_M_KNOWN || req->method == HTTP_M_OPTIONS) {
        error_page(w, r, req, 405);
    } else {
        serve_target(w, r, req);
    }
}

void http_respond_unavailable(struct http_worker *w, const struct http_req *req,
                              struct http_resp *r)
{
    (void)resp_init(w, r);
    r->close = 1;
    error_page(w, r, req, 503);
}

void http_resp_done(struct http_worker *w, struct http_resp *r)
{
    (void)w;
    if (r->ent)
        http_entry_release(r->ent);
    r->ent = NULL;
    if (r->z)
        http_zcopy_release(r->z);
    r->z = NULL;
    free(r->body_alloc);
    r->body_alloc = NULL;
    free(r->parts);
    r->parts = NULL;
    r->nparts = 0;
    if (r->head != r->small)
        free(r->head);
    r->head = r->small;
}

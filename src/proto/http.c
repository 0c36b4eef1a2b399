/* http.c - the HTTP/1.1 static file server: state, the open-file cache,
 * and the response to one request (both handler styles share it). */
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

#define CACHE_VALID_S 1 /* a cached path is reopened after this long */

/* ---- the server object ---------------------------------------------------- */

static void entry_unref(struct fentry *e);

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
            entry_unref(http->shared.slots[i]);
    for (size_t i = 0; i < HTTP_FC_STRIPES; i++)
        pthread_mutex_destroy(&http->shared.locks[i]);
    pthread_mutex_destroy(&http->lock);
    close(http->rootfd);
    free(http);
}

/* ---- workers --------------------------------------------------------------- */

static _Thread_local struct http_worker *tl_worker;

static void flush_cb(iop_defer *d)
{
    http_log_flush(d->data);
}

struct http_worker *http_worker_get(iop_http *http, iop_loop *loop)
{
    struct http_worker *w = tl_worker;
    if (w && w->http == http && w->loop == loop)
        return w;
    pthread_mutex_lock(&http->lock);
    for (w = http->workers; w; w = w->next)
        if (w->loop == loop && loop)
            break;
    if (!w && (w = calloc(1, sizeof *w))) {
        w->http = http;
        w->loop = loop;
        w->cache = 1;
        w->flush.data = w;
        w->tick.data = w;
        w->next = http->workers;
        http->workers = w;
    }
    pthread_mutex_unlock(&http->lock);
    if (w)
        tl_worker = w;
    return w;
}

void http_worker_local(struct http_worker *w, iop_http *http)
{
    memset(w, 0, sizeof *w);
    w->http = http;
}

static void entry_ref(struct fentry *e)
{
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
}

static void entry_unref(struct fentry *e)
{
    if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (e->map)
        munmap((void *)(uintptr_t)e->map, (size_t)e->st.st_size);
    close(e->fd);
    free(e->path);
    free(e);
}

void http_worker_fini(struct http_worker *w)
{
    http_log_flush(w);
    free(w->log);
    w->log = NULL;
    free(w->peers);
    w->peers = NULL;
    w->npeers = 0;
    for (size_t i = 0; i < HTTP_FC_SLOTS; i++) {
        if (w->slots[i])
            entry_unref(w->slots[i]);
        w->slots[i] = NULL;
    }
    if (w->loop)
        http_event_worker_fini(w);
    if (tl_worker == w)
        tl_worker = NULL;
}

/* ---- the open-file cache --------------------------------------------------- */

static uint32_t hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static void entry_fill(struct fentry *e)
{
    e->etag_len = http_etag(&e->st, e->etag);
    http_date(e->st.st_mtime, e->lastmod);
}

static int same_file(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_size == b->st_size && a->st_mode == b->st_mode &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

static void tick_cb(iop_defer *d)
{
    struct http_worker *w = d->data;
    w->epoch++;
}

/* A fresh entry for rel: opened beneath the root.  -errno. */
static int entry_open(struct http_worker *w, const char *rel, struct fentry **out)
{
    /* O_NONBLOCK: opening a fifo for reading would wait for a writer. */
    int fd = http_open_beneath(w->http->rootfd, rel, O_RDONLY | O_NONBLOCK);
    if (fd < 0)
        return fd;
    struct fentry *e = calloc(1, sizeof *e);
    if (!e || !(e->path = strdup(rel)) || fstat(fd, &e->st) < 0) {
        int err = e && e->path ? -errno : -ENOMEM;
        if (e)
            free(e->path);
        free(e);
        close(fd);
        return err;
    }
    e->fd = fd;
    e->opened = time(NULL);
    e->epoch = w->epoch;
    if (w->loop)
        (void)iop_defer_start(w->loop, &w->tick, tick_cb);
    const char *slash = strrchr(rel, '/');
    const char *name = slash ? slash + 1 : rel;
    e->mime = http_mime_type(name, strlen(name));
    entry_fill(e);
    *out = e;
    return 0;
}

/* Is e still the file it was?  fstat once per loop iteration (always
 * without a loop): a file rewritten in place gets new validators. */
static int entry_check(struct http_worker *w, struct fentry *e)
{
    if (w->loop && e->epoch == w->epoch)
        return 1;
    struct stat st;
    if (fstat(e->fd, &st) < 0 || st.st_nlink == 0)
        return 0;
    if (!same_file(&st, &e->st)) {
        /* A mapping's size is the file's; other threads read a shared
         * entry: a new entry, not this one changed. */
        if (e->map || w->shared)
            return 0;
        e->st = st;
        entry_fill(e);
    }
    if (w->loop) {
        e->epoch = w->epoch;
        (void)iop_defer_start(w->loop, &w->tick, tick_cb);
    }
    return 1;
}

static int fresh(const struct fentry *e, const char *rel)
{
    return e && !strcmp(e->path, rel) && time(NULL) - e->opened < CACHE_VALID_S;
}

/* A fresh entry for rel, held, and kept in *slot (under lock, if any) when
 * it is a regular file. */
static int entry_reopen(struct http_worker *w, const char *rel, struct fentry **slot,
                        pthread_mutex_t *lock, struct fentry **out)
{
    struct fentry *e = NULL, *old = NULL;
    int rc = entry_open(w, rel, &e);
    if (rc < 0)
        return rc;
    atomic_init(&e->refs, 1);
    if (slot && S_ISREG(e->st.st_mode)) {
        entry_ref(e);
        if (lock)
            pthread_mutex_lock(lock);
        old = *slot;
        *slot = e;
        if (lock)
            pthread_mutex_unlock(lock);
    }
    if (old)
        entry_unref(old);
    *out = e;
    return 0;
}

/* The blocking models' shared cache: the slot's lock is held only to take a
 * reference or to replace the entry. */
static int shared_get(struct http_worker *w, const char *rel, struct fentry **out)
{
    uint32_t i = hash(rel) % HTTP_FC_SLOTS;
    struct fentry **slot = &w->shared->slots[i];
    pthread_mutex_t *lock = &w->shared->locks[i % HTTP_FC_STRIPES];
    pthread_mutex_lock(lock);
    struct fentry *e = fresh(*slot, rel) ? *slot : NULL;
    if (e)
        entry_ref(e);
    pthread_mutex_unlock(lock);
    if (e && entry_check(w, e)) {
        *out = e;
        return 0;
    }
    if (e)
        entry_unref(e);
    return entry_reopen(w, rel, slot, lock, out);
}

/* The entry for rel, held (release with entry_release).  Cached entries
 * are checked with fstat on every use: a file written in place is seen at
 * once; a name that now points elsewhere (rename, delete) within
 * CACHE_VALID_S. */
static int entry_get(struct http_worker *w, const char *rel, struct fentry **out)
{
    if (w->cache && w->shared)
        return shared_get(w, rel, out);
    struct fentry **slot = w->cache ? &w->slots[hash(rel) % HTTP_FC_SLOTS] : NULL;
    if (slot && fresh(*slot, rel) && entry_check(w, *slot)) {
        entry_ref(*slot);
        *out = *slot;
        return 0;
    }
    return entry_reopen(w, rel, slot, NULL, out);
}

static void entry_release(struct fentry *e)
{
    entry_unref(e);
}

void http_entry_hold(struct fentry *e)
{
    entry_ref(e);
}

void http_entry_release(void *e)
{
    entry_release(e);
}

const char *http_entry_map(struct fentry *e)
{
    if (e->map_tried)
        return e->map;
    e->map_tried = 1;
    size_t n = (size_t)e->st.st_size;
    if (!S_ISREG(e->st.st_mode) || n == 0 || n > HTTP_MAP_MAX)
        return NULL;
    void *p = mmap(NULL, n, PROT_READ, MAP_SHARED, e->fd, 0);
    e->map = p == MAP_FAILED ? NULL : p;
    return e->map;
}

/* ---- building a response --------------------------------------------------- */

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
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
    puts_(r, "\r\n");
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
        puts_(r, "Allow: GET, HEAD\r\n");
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

static void file_headers(struct http_resp *r, const struct fentry *e)
{
    puts_(r, "Last-Modified: ");
    puts_(r, e->lastmod);
    puts_(r, "\r\nETag: ");
    put(r, e->etag, e->etag_len);
    puts_(r, "\r\n");
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

static void serve_file(struct http_worker *w, struct http_resp *r, const struct http_req *req,
                       struct fentry *e)
{
    uint64_t size = (uint64_t)e->st.st_size, first = 0, last = size ? size - 1 : 0;
    int range = 0;
    if (not_modified(req, e)) {
        head_begin(w, r, 304);
        file_headers(r, e);
        head_end(r, req);
        entry_release(e);
        return;
    }
    /* If-Range: a client resuming a copy of another version must get the
     * whole file, never bytes of this one spliced onto its own. */
    int ranged = req->range.p &&
                 (!req->if_range.p || http_if_range(req->if_range.p, req->if_range.n, e->etag,
                                                    e->etag_len, e->st.st_mtime, time(NULL)));
    if (ranged && (range = http_range(req->range.p, req->range.n, size, &first, &last)) < 0) {
        char cr[64];
        snprintf(cr, sizeof cr, "Content-Range: bytes */%llu\r\n", (unsigned long long)size);
        entry_release(e);
        error_page_x(w, r, req, 416, cr);
        return;
    }
    uint64_t n = size ? last - first + 1 : 0;
    head_begin(w, r, range ? 206 : 200);
    puts_(r, "Content-Type: ");
    puts_(r, e->mime);
    puts_(r, "\r\n");
    length(r, n);
    file_headers(r, e);
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
        entry_release(e);
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
    size_t need = 512 + http_dir_location(rel, &query, NULL, 0);
    if (need > sizeof r->small) {
        char *big = malloc(need);
        if (!big) {
            error_page(w, r, req, 503);
            return;
        }
        r->head = big;
        r->head_cap = need;
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
                    const char *rel, struct fentry *dir)
{
    char display[HTTP_PATH_BYTES + 2];
    snprintf(display, sizeof display, "/%s%s", rel, *rel ? "/" : "");
    int rc = http_dir_listing(dir->fd, display, &r->body_alloc, &r->body_len);
    entry_release(dir);
    if (rc < 0) {
        error_page(w, r, req, status_of(rc));
        return;
    }
    head_begin(w, r, 200);
    puts_(r, html_type);
    length(r, r->body_len);
    head_end(r, req);
    if (req->method == HTTP_M_HEAD) {
        r->body_len = 0;
        return;
    }
    r->body = r->body_alloc;
    r->log_bytes = r->body_len;
}

static void directory(struct http_worker *w, struct http_resp *r, const struct http_req *req,
                      const char *rel, struct fentry *dir)
{
    char index[HTTP_PATH_BYTES + 16];
    snprintf(index, sizeof index, "%s%sindex.html", rel, *rel ? "/" : "");
    struct fentry *e;
    int rc = entry_get(w, index, &e);
    if (rc == 0 && S_ISREG(e->st.st_mode)) {
        entry_release(dir);
        serve_file(w, r, req, e);
        return;
    }
    if (rc == 0)
        entry_release(e);
    else if (rc != -ENOENT) {
        entry_release(dir);
        error_page(w, r, req, status_of(rc));
        return;
    }
    if (w->http->cfg.no_listing) {
        entry_release(dir);
        error_page(w, r, req, 403);
        return;
    }
    listing(w, r, req, rel, dir);
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
    if ((rc = entry_get(w, rel, &e)) < 0) {
        error_page(w, r, req, status_of(rc));
        return;
    }
    if (S_ISDIR(e->st.st_mode)) {
        if (!dir_form) {
            entry_release(e);
            redirect(w, r, req, rel, query);
        } else {
            directory(w, r, req, rel, e);
        }
    } else if (S_ISREG(e->st.st_mode) && dir_form && *rel) {
        entry_release(e); /* "/file/": a file is not a directory */
        error_page(w, r, req, 404);
    } else if (S_ISREG(e->st.st_mode)) {
        serve_file(w, r, req, e);
    } else {
        entry_release(e); /* a device, a fifo, a socket: never opened for reading */
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

void http_respond(struct http_worker *w, const struct http_req *req, int err, int stopping,
                  struct http_resp *r)
{
    memset(r, 0, offsetof(struct http_resp, small));
    r->head = r->small;
    r->head_cap = sizeof r->small;
    r->fd = -1;
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
    } else if (req->method == HTTP_M_KNOWN) {
        error_page(w, r, req, 405);
    } else {
        serve_target(w, r, req);
    }
}

void http_respond_unavailable(struct http_worker *w, const struct http_req *req,
                              struct http_resp *r)
{
    memset(r, 0, offsetof(struct http_resp, small));
    r->head = r->small;
    r->head_cap = sizeof r->small;
    r->fd = -1;
    r->close = 1;
    error_page(w, r, req, 503);
}

void http_resp_done(struct http_worker *w, struct http_resp *r)
{
    (void)w;
    if (r->ent)
        entry_release(r->ent);
    r->ent = NULL;
    free(r->body_alloc);
    r->body_alloc = NULL;
    if (r->head != r->small)
        free(r->head);
    r->head = r->small;
}

/* ---- the access log -------------------------------------------------------- */

static const char *clf_now(struct http_worker *w)
{
    static const char mon[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = time(NULL);
    if (t != w->clf_t) {
        struct tm tm;
        gmtime_r(&t, &tm);
        w->clf_t = t;
        snprintf(w->clf, sizeof w->clf, "%02d/%s/%04d:%02d:%02d:%02d +0000", tm.tm_mday,
                 mon[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    }
    return w->clf;
}

void http_peer_name(int fd, char *out, size_t outsz)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    snprintf(out, outsz, "-");
    if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
        return;
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, out, (socklen_t)outsz);
    else if (ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, out, (socklen_t)outsz);
}

#define LOG_LINE_MAX 2048 /* request-line bytes logged; escaping may make 4x */
#define LOG_HEAD     88   /* peer (<= 45), date (26), separators */
#define LOG_TAIL     40   /* quote, status, bytes (<= 20), LF */
#define LOG_EXTRA    (LOG_HEAD + LOG_TAIL)

/* One CLF line into out (4 * n + LOG_EXTRA bytes); its length.  The request
 * line is escaped: a client must not be able to forge fields with '"' or
 * send control sequences to whoever reads the log. */
static size_t log_line(struct http_worker *w, char *out, const char *host, const char *line,
                       size_t n, int status, const char *bytes)
{
    size_t len = (size_t)snprintf(out, LOG_HEAD, "%s - - [%s] \"", host, clf_now(w));
    len += line ? http_log_escape(line, n, out + len) : (size_t)snprintf(out + len, 2, "-");
    len += (size_t)snprintf(out + len, LOG_TAIL, "\" %d %s\n", status, bytes);
    return len;
}

void http_log(struct http_worker *w, const char *host, const struct http_req *req, int err,
              const struct http_resp *r)
{
    const struct iop_http_config *cfg = &w->http->cfg;
    if (!cfg->access_log)
        return;
    char bytes[24] = "-";
    if (r->log_bytes)
        snprintf(bytes, sizeof bytes, "%llu", (unsigned long long)r->log_bytes);
    int show = req && !err;
    size_t linelen = show ? (req->line.n < LOG_LINE_MAX ? req->line.n : LOG_LINE_MAX) : 0;
    const char *line = show ? req->line.p : NULL;
    size_t need = 4 * linelen + LOG_EXTRA;
    if (!w->loop) {
        char buf[4 * LOG_LINE_MAX + LOG_EXTRA];
        size_t n = log_line(w, buf, host, line, linelen, r->status, bytes);
        cfg->access_log(cfg->access_log_arg, buf, n);
        return;
    }
    if (w->loglen + need > w->logcap) {
        size_t cap = w->logcap ? w->logcap * 2 : 16384;
        while (cap < w->loglen + need)
            cap *= 2;
        char *p = realloc(w->log, cap);
        if (!p)
            return;
        w->log = p;
        w->logcap = cap;
    }
    w->loglen += log_line(w, w->log + w->loglen, host, line, linelen, r->status, bytes);
    if (w->loglen > 65536)
        http_log_flush(w);
    else
        (void)iop_defer_start(w->loop, &w->flush, flush_cb);
}

void http_log_flush(struct http_worker *w)
{
    const struct iop_http_config *cfg = &w->http->cfg;
    if (w->loglen && cfg->access_log)
        cfg->access_log(cfg->access_log_arg, w->log, w->loglen);
    w->loglen = 0;
}

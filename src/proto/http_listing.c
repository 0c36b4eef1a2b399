/* http_listing.c - directory listings: an HTML page a person reads (name,
 * size, modified time; sortable; light and dark) or, for a client that
 * asks for application/json, a JSON array.
 *
 * Names are whatever bytes the file system holds.  Hrefs carry them
 * exactly (percent-encoded); text shows valid UTF-8 as it is, HTML-escaped,
 * and any other byte (invalid UTF-8, control characters) as U+FFFD, so the
 * page stays valid UTF-8 and one line per entry.  JSON escapes the same
 * way and also gives each entry's url. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proto/http_srv.h"

#define REPLACEMENT "\xef\xbf\xbd" /* U+FFFD */

/* ---- an output buffer ------------------------------------------------------ */

struct buf {
    char *p;
    size_t len, cap;
    int err;
};

/* Room for n more bytes plus a NUL; 0 or -1 (b->err set). */
static int buf_reserve(struct buf *b, size_t n)
{
    if (b->err)
        return -1;
    if (b->len + n + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->err = -ENOMEM;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void buf_addn(struct buf *b, const char *s, size_t n)
{
    if (buf_reserve(b, n) == 0) {
        memcpy(b->p + b->len, s, n);
        b->len += n;
    }
}

static void buf_add(struct buf *b, const char *s)
{
    buf_addn(b, s, strlen(s));
}

static void buf_encode(struct buf *b, const char *s, size_t n)
{
    size_t need = http_pct_encode(s, n, 0, NULL, 0);
    if (buf_reserve(b, need) == 0)
        b->len += http_pct_encode(s, n, 0, b->p + b->len, need + 1);
}

/* The length of the valid UTF-8 sequence at s[0..n) (no overlongs, no
 * surrogates, nothing past U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    if (s[0] < 0x80)
        return 1;
    size_t k = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
    if (k == 0 || s[0] > 0xf4 || n < k)
        return 0;
    for (size_t i = 1; i < k; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] > 0x9f) ||
        (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] > 0x8f))
        return 0;
    return k;
}

/* A name as text: HTML-escaped (html) or JSON-escaped, and any byte that
 * is not part of printable UTF-8 as U+FFFD. */
static void buf_text(struct buf *b, const char *s, size_t n, int html)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t k = utf8_len(u + i, n - i);
        if (k == 0 || u[i] < 0x20 || u[i] == 0x7f) {
            buf_add(b, REPLACEMENT);
            i++;
            continue;
        }
        char c = s[i];
        if (html && strchr("&<>\"'", c) && c) {
            char esc[8];
            size_t m = http_html_escape(&c, 1, esc, sizeof esc);
            buf_addn(b, esc, m);
        } else if (!html && (c == '"' || c == '\\')) {
            buf_addn(b, "\\", 1);
            buf_addn(b, &c, 1);
        } else {
            buf_addn(b, s + i, k);
        }
        i += k;
    }
}

/* ---- reading the directory --------------------------------------------------- */

enum { T_FILE, T_DIR, T_OTHER };

struct entry {
    size_t off, len; /* in the name arena while reading */
    const char *name;
    int type;
    uint64_t size;
    struct timespec mtime;
};

struct listing {
    struct buf names; /* NUL-separated */
    struct entry *ents;
    size_t count, cap, ndirs;
};

/* Follows symlinks: a link to a directory is listed as one; a broken link
 * is an "other" with its own times. */
static void entry_stat(int dfd, const char *name, struct entry *e)
{
    struct stat st;
    if (fstatat(dfd, name, &st, 0) < 0 && fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        e->type = T_OTHER;
        return;
    }
    e->type = S_ISDIR(st.st_mode) ? T_DIR : S_ISREG(st.st_mode) ? T_FILE : T_OTHER;
    e->size = e->type == T_FILE ? (uint64_t)st.st_size : 0;
    e->mtime = st.st_mtim;
}

static int listing_add(struct listing *l, int dfd, const struct dirent *d)
{
    if (l->count == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct entry *e = realloc(l->ents, cap * sizeof *e);
        if (!e)
            return -ENOMEM;
        l->ents = e;
        l->cap = cap;
    }
    size_t len = strlen(d->d_name);
    if (buf_reserve(&l->names, len + 1) < 0)
        return l->names.err;
    memcpy(l->names.p + l->names.len, d->d_name, len + 1);
    struct entry *e = &l->ents[l->count++];
    *e = (struct entry){.off = l->names.len, .len = len};
    entry_stat(dfd, d->d_name, e);
    l->names.len += len + 1;
    return 0;
}

static int listing_read(struct listing *l, int dirfd)
{
    /* A description of our own: readdir must not move (or depend on) the
     * caller's offset, and closedir must not close the caller's fd. */
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    DIR *dir = fdopendir(fd);
    if (!dir) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    int rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *d = readdir(dir);
        if (!d) {
            rc = errno ? -errno : 0;
            break;
        }
        if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
            continue;
        if ((rc = listing_add(l, fd, d)) < 0)
            break;
    }
    closedir(dir);
    return rc;
}

/* ---- order: directories first, then the key, then the name ------------------ */

static int group(const struct entry *a, const struct entry *b)
{
    return (b->type == T_DIR) - (a->type == T_DIR);
}

static int by_name(const void *pa, const void *pb)
{
    const struct entry *a = pa, *b = pb;
    int g = group(a, b);
    return g ? g : strcmp(a->name, b->name);
}

static int by_size(const void *pa, const void *pb)
{
    const struct entry *a = pa, *b = pb;
    int g = group(a, b);
    if (g || a->size == b->size)
        return g ? g : strcmp(a->name, b->name);
    return a->size < b->size ? -1 : 1;
}

static int by_time(const void *pa, const void *pb)
{
    const struct entry *a = pa, *b = pb;
    int g = group(a, b);
    if (g)
        return g;
    if (a->mtime.tv_sec != b->mtime.tv_sec)
        return a->mtime.tv_sec < b->mtime.tv_sec ? -1 : 1;
    if (a->mtime.tv_nsec != b->mtime.tv_nsec)
        return a->mtime.tv_nsec < b->mtime.tv_nsec ? -1 : 1;
    return strcmp(a->name, b->name);
}

static void reverse(struct entry *e, size_t n)
{
    for (size_t i = 0; i < n / 2; i++) {
        struct entry t = e[i];
        e[i] = e[n - 1 - i];
        e[n - 1 - i] = t;
    }
}

static void listing_sort(struct listing *l, const struct http_listing_opts *o)
{
    int (*cmp)(const void *, const void *) = o->sort == HTTP_SORT_SIZE   ? by_size
                                             : o->sort == HTTP_SORT_TIME ? by_time
                                                                         : by_name;
    for (size_t i = 0; i < l->count; i++)
        l->ents[i].name = l->names.p + l->ents[i].off;
    if (l->count > 1)
        qsort(l->ents, l->count, sizeof *l->ents, cmp);
    while (l->ndirs < l->count && l->ents[l->ndirs].type == T_DIR)
        l->ndirs++;
    if (o->desc) { /* directories stay first */
        reverse(l->ents, l->ndirs);
        reverse(l->ents + l->ndirs, l->count - l->ndirs);
    }
}

/* ---- formatting -------------------------------------------------------------- */

static const char *const sort_names[] = {"name", "size", "time"};

/* "?sort=size&amp;order=desc" (for an attribute); "" for the default
 * order, so that plain links stay plain. */
static void sort_query(char *out, size_t n, const struct http_listing_opts *o)
{
    if (o->sort == HTTP_SORT_NAME && !o->desc)
        *out = '\0';
    else
        snprintf(out, n, "?sort=%s&amp;order=%s", sort_names[o->sort], o->desc ? "desc" : "asc");
}

static void human_size(uint64_t v, char *out, size_t n)
{
    static const char units[][4] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    if (v < 1024) {
        snprintf(out, n, "%llu B", (unsigned long long)v);
        return;
    }
    double d = (double)v;
    int u = 0;
    while (d >= 1024 && u < 5) {
        d /= 1024;
        u++;
    }
    snprintf(out, n, d < 10 ? "%.1f %s" : "%.0f %s", d, units[u]);
}

static void rfc3339(time_t t, char *out, size_t n, int human)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, human ? "%Y-%m-%d %H:%M" : "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static const char style[] =
    "<style>\n"
    ":root{color-scheme:light dark;--fg:#1d1d1f;--bg:#fff;--mute:#6b6b70;--line:#e4e4e7;"
    "--link:#0b57d0;--hi:#f4f4f5}\n"
    "@media (prefers-color-scheme:dark){:root{--fg:#e8e8ea;--bg:#16171a;--mute:#9b9ba1;"
    "--line:#2d2f34;--link:#8ab4f8;--hi:#202226}}\n"
    "body{margin:0 auto;max-width:64em;padding:1em;font:16px/1.45 system-ui,sans-serif;"
    "color:var(--fg);background:var(--bg)}\n"
    "h1{font-size:1.2em;font-weight:600;overflow-wrap:anywhere}\n"
    "table{width:100%;border-collapse:collapse}\n"
    "th,td{padding:.4em .5em;border-bottom:1px solid var(--line);text-align:left}\n"
    "th{font-weight:600;white-space:nowrap}\n"
    "tr:hover td{background:var(--hi)}\n"
    ".n{overflow-wrap:anywhere}\n"
    ".s{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}\n"
    ".t{white-space:nowrap;color:var(--mute);font-variant-numeric:tabular-nums}\n"
    "a{color:var(--link);text-decoration:none}\n"
    "a:hover{text-decoration:underline}\n"
    "@media (max-width:30em){.t{display:none}body{padding:.5em}}\n"
    "</style>\n";

/* A column head: a link that sorts by it (the current column: the other
 * way round), aria-sort on the current one. */
static void column(struct buf *b, const struct http_listing_opts *o, int key, const char *cls,
                   const char *label)
{
    struct http_listing_opts next = {key, key == o->sort ? !o->desc : 0, 0};
    char q[64];
    sort_query(q, sizeof q, &next);
    buf_add(b, "<th class=\"");
    buf_add(b, cls);
    if (key == o->sort)
        buf_add(b, o->desc ? "\" aria-sort=\"descending" : "\" aria-sort=\"ascending");
    buf_add(b, "\"><a id=\"sort-");
    buf_add(b, sort_names[key]);
    buf_add(b, "\" href=\"");
    buf_add(b, *q ? q : "?sort=name&amp;order=asc");
    buf_add(b, "\">");
    buf_add(b, label);
    buf_add(b, "</a>");
    if (key == o->sort)
        buf_add(b, o->desc ? " \xe2\x86\x93" : " \xe2\x86\x91"); /* down / up arrow */
    buf_add(b, "</th>");
}

static void html_row(struct buf *b, const struct entry *e, const char *keep)
{
    char sz[32], exact[32], when[32], iso[32];
    int dir = e->type == T_DIR;
    buf_add(b, "<tr><td class=\"n\"><a href=\"");
    buf_encode(b, e->name, e->len);
    if (dir) {
        buf_add(b, "/");
        buf_add(b, keep);
    }
    buf_add(b, "\">");
    buf_text(b, e->name, e->len, 1);
    buf_add(b, dir ? "/</a></td><td class=\"s\">&mdash;</td>" : "</a></td>");
    if (!dir) {
        human_size(e->size, sz, sizeof sz);
        snprintf(exact, sizeof exact, "%llu", (unsigned long long)e->size);
        buf_add(b, "<td class=\"s\" title=\"");
        buf_add(b, exact);
        buf_add(b, " bytes\" data-bytes=\"");
        buf_add(b, exact);
        buf_add(b, "\">");
        buf_add(b, sz);
        buf_add(b, "</td>");
    }
    rfc3339(e->mtime.tv_sec, when, sizeof when, 1);
    rfc3339(e->mtime.tv_sec, iso, sizeof iso, 0);
    buf_add(b, "<td class=\"t\"><time datetime=\"");
    buf_add(b, iso);
    buf_add(b, "\">");
    buf_add(b, when);
    buf_add(b, "</time></td></tr>\n");
}

static void listing_html(struct buf *b, const struct listing *l, const char *display,
                         const struct http_listing_opts *o)
{
    char keep[64];
    sort_query(keep, sizeof keep, o);
    buf_add(b, "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n"
               "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
               "<meta name=\"color-scheme\" content=\"light dark\">\n"
               "<title>Directory listing for ");
    buf_text(b, display, strlen(display), 1);
    buf_add(b, "</title>\n");
    buf_add(b, style);
    buf_add(b, "</head>\n<body>\n<h1>Directory listing for ");
    buf_text(b, display, strlen(display), 1);
    buf_add(b, "</h1>\n<table>\n<thead><tr>");
    column(b, o, HTTP_SORT_NAME, "n", "Name");
    column(b, o, HTTP_SORT_SIZE, "s", "Size");
    column(b, o, HTTP_SORT_TIME, "t", "Modified");
    buf_add(b, "</tr></thead>\n<tbody>\n");
    if (strcmp(display, "/") != 0) {
        buf_add(b, "<tr><td class=\"n\"><a href=\"../");
        buf_add(b, keep);
        buf_add(b, "\" rel=\"up\">../</a></td><td class=\"s\"></td><td class=\"t\"></td></tr>\n");
    }
    for (size_t i = 0; i < l->count; i++)
        html_row(b, &l->ents[i], keep);
    buf_add(b, "</tbody>\n</table>\n</body>\n</html>\n");
}

static void listing_json(struct buf *b, const struct listing *l)
{
    static const char *const types[] = {"file", "dir", "other"};
    char num[32], iso[32];
    buf_add(b, "[");
    for (size_t i = 0; i < l->count; i++) {
        const struct entry *e = &l->ents[i];
        buf_add(b, i ? ",\n{\"name\":\"" : "\n{\"name\":\"");
        buf_text(b, e->name, e->len, 0);
        buf_add(b, "\",\"type\":\"");
        buf_add(b, types[e->type]);
        snprintf(num, sizeof num, "%llu", (unsigned long long)e->size);
        buf_add(b, "\",\"size\":");
        buf_add(b, num);
        rfc3339(e->mtime.tv_sec, iso, sizeof iso, 0);
        buf_add(b, ",\"mtime\":\"");
        buf_add(b, iso);
        buf_add(b, "\",\"url\":\"");
        buf_encode(b, e->name, e->len);
        buf_add(b, e->type == T_DIR ? "/\"}" : "\"}");
    }
    buf_add(b, l->count ? "\n]\n" : "]\n");
}

int http_dir_listing(int dirfd, const char *display, const struct http_listing_opts *o, char **body,
                     size_t *len)
{
    static const struct http_listing_opts defaults = {0};
    struct listing l = {0};
    struct buf page = {0};
    if (!o)
        o = &defaults;
    int rc = listing_read(&l, dirfd);
    if (rc == 0) {
        listing_sort(&l, o);
        if (o->json)
            listing_json(&page, &l);
        else
            listing_html(&page, &l, display, o);
        rc = page.err;
    }
    free(l.ents);
    free(l.names.p);
    if (rc < 0) {
        free(page.p);
        return rc;
    }
    page.p[page.len] = '\0';
    *body = page.p;
    *len = page.len;
    return 0;
}

/* ---- the request's side ------------------------------------------------------ */

static int param(struct http_str q, const char *key, struct http_str *val)
{
    size_t k = strlen(key), i = 0;
    while (i < q.n) {
        const char *end = memchr(q.p + i, '&', q.n - i);
        size_t n = end ? (size_t)(end - (q.p + i)) : q.n - i;
        if (n > k && q.p[i + k] == '=' && memcmp(q.p + i, key, k) == 0) {
            *val = (struct http_str){q.p + i + k + 1, n - k - 1};
            return 1;
        }
        i += n + 1;
    }
    return 0;
}

static int is(struct http_str v, const char *lit)
{
    return v.n == strlen(lit) && memcmp(v.p, lit, v.n) == 0;
}

void http_listing_query(struct http_str q, struct http_listing_opts *o)
{
    struct http_str v;
    o->sort = HTTP_SORT_NAME;
    o->desc = 0;
    if (q.p && param(q, "sort", &v))
        o->sort = is(v, "size") ? HTTP_SORT_SIZE : is(v, "time") ? HTTP_SORT_TIME : HTTP_SORT_NAME;
    if (q.p && param(q, "order", &v))
        o->desc = is(v, "desc");
}

void http_listing(struct http_worker *w, struct http_resp *r, const struct http_req *req,
                  const char *rel, struct http_str query, int dirfd, int *err)
{
    char display[HTTP_PATH_BYTES + 2];
    struct http_listing_opts o;
    http_listing_query(query, &o);
    o.json = req->accept.p && http_accept_json(req->accept.p, req->accept.n);
    snprintf(display, sizeof display, "/%s%s", rel, *rel ? "/" : "");
    if ((*err = http_dir_listing(dirfd, display, &o, &r->body_alloc, &r->body_len)) < 0)
        return;
    http_head_begin(w, r, 200);
    http_puts(r, o.json ? "Content-Type: application/json\r\n"
                        : "Content-Type: text/html; charset=utf-8\r\n");
    http_puts(r, "Vary: Accept\r\nContent-Length: ");
    char n[24];
    snprintf(n, sizeof n, "%zu\r\n", r->body_len);
    http_puts(r, n);
    http_head_end(r, req);
    if (req->method == HTTP_M_HEAD) {
        r->body_len = 0;
        return;
    }
    r->body = r->body_alloc;
    r->log_bytes = r->body_len;
}

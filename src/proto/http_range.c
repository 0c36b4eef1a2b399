/* http_range.c - Range (RFC 9110 §14): one range, or several, which are
 * sorted and coalesced (overlapping or adjacent ones become one) and
 * answered as multipart/byteranges (§14.6).  The parsers are pure and
 * fuzzed (tests/fuzz/fuzz_http_path.c).
 *
 * Too many ranges, or ranges asking for more bytes than the file has
 * (the "Apache killer": many overlapping ranges of a large file), get the
 * whole file instead.  A multipart body is a list of parts, each some
 * text (boundary, Content-Type, Content-Range) and a slice of the file or
 * of a copy in memory, so the slices go out by sendfile or lent as any
 * body.  Its boundary is random per response and checked against the
 * bytes of every slice. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "proto/http_srv.h"

static int is_ows(int c)
{
    return c == ' ' || c == '\t';
}

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static size_t skip_ows(const char *s, size_t n, size_t i)
{
    while (i < n && is_ows(s[i]))
        i++;
    return i;
}

/* Decimal digits at s[*i...] into *v; 0, or -1 when there are none or they
 * overflow. */
static int get_u64(const char *s, size_t n, size_t *i, uint64_t *v)
{
    size_t start = *i;
    *v = 0;
    for (; *i < n && is_digit(s[*i]); (*i)++) {
        unsigned d = (unsigned)(s[*i] - '0');
        if (*v > (UINT64_MAX - d) / 10)
            return -1;
        *v = *v * 10 + d;
    }
    return *i > start ? 0 : -1;
}

/* The byte-range-spec or suffix-range after "bytes=": 1, -416, or 0. */
static int range_spec(const char *s, size_t n, uint64_t size, uint64_t *first, uint64_t *last)
{
    size_t i = 0;
    uint64_t a = 0, b = UINT64_MAX;
    int suffix = i < n && s[i] == '-';
    if (!suffix && get_u64(s, n, &i, &a) < 0)
        return 0;
    i = skip_ows(s, n, i);
    if (i >= n || s[i] != '-')
        return 0;
    i = skip_ows(s, n, i + 1);
    if ((i < n || suffix) && get_u64(s, n, &i, &b) < 0)
        return 0;
    if (skip_ows(s, n, i) != n || a > b)
        return 0;
    if (suffix) {
        if (b == 0 || size == 0)
            return -416;
        a = b > size ? 0 : size - b;
        b = size - 1;
    }
    if (a >= size)
        return -416;
    *first = a;
    *last = b >= size ? size - 1 : b;
    return 1;
}

/* After "bytes" OWS "=": the offset of the first spec, or 0 when s is not
 * a bytes range (which is ignored, as RFC 9110 allows). */
static size_t unit_end(const char *s, size_t n)
{
    static const char unit[] = "bytes";
    size_t i = skip_ows(s, n, 0);
    for (size_t k = 0; k < 5; k++, i++)
        if (i >= n || lower(s[i]) != unit[k])
            return 0;
    i = skip_ows(s, n, i);
    if (i >= n || s[i] != '=')
        return 0;
    return skip_ows(s, n, i + 1);
}

static int by_first(const void *a, const void *b)
{
    const struct http_byterange *x = a, *y = b;
    return x->first < y->first ? -1 : x->first > y->first;
}

/* Sort and merge overlapping or adjacent ranges: the count left. */
static int coalesce(struct http_byterange *rg, int n)
{
    qsort(rg, (size_t)n, sizeof *rg, by_first);
    int k = 0;
    for (int i = 1; i < n; i++) {
        if (rg[i].first <= rg[k].last + 1) {
            if (rg[i].last > rg[k].last)
                rg[k].last = rg[i].last;
        } else {
            rg[++k] = rg[i];
        }
    }
    return k + 1;
}

int http_ranges(const char *s, size_t n, uint64_t size, struct http_byterange *out)
{
    size_t i = unit_end(s, n);
    int count = 0, specs = 0;
    uint64_t total = 0;
    if (i == 0)
        return 0;
    while (i <= n) {
        const char *comma = memchr(s + i, ',', n - i);
        size_t end = comma ? (size_t)(comma - s) : n;
        size_t a = skip_ows(s, end, i), b = end;
        while (b > a && is_ows(s[b - 1]))
            b--;
        i = end + 1;
        if (a == b)
            continue; /* an empty list element */
        if (++specs > HTTP_RANGES_MAX)
            return 0;
        uint64_t first, last;
        int rc = range_spec(s + a, b - a, size, &first, &last);
        if (rc == 0)
            return 0;
        if (rc < 0)
            continue;
        if (last - first + 1 > size - total)
            return 0; /* more bytes than the file: the whole file is cheaper */
        total += last - first + 1;
        out[count++] = (struct http_byterange){first, last};
    }
    if (specs == 0)
        return 0;
    return count ? coalesce(out, count) : -416;
}

int http_range(const char *s, size_t n, uint64_t size, uint64_t *first, uint64_t *last)
{
    size_t i = unit_end(s, n);
    if (i == 0 || memchr(s, ',', n))
        return 0;
    return range_spec(s + i, n - i, size, first, last);
}

/* ---- multipart/byteranges ---------------------------------------------------- */

/* Does b[0..blen) occur in bytes off..off+len of the representation (mem,
 * or the file fd read in blocks that overlap by blen - 1)?  A read error
 * counts as a hit: pick another boundary, then give up. */
static int occurs(const char *mem, int fd, uint64_t off, uint64_t len, const char *b, size_t blen)
{
    enum { BLOCK = 65536 }; /* on the heap: a coroutine's stack is small */
    if (mem)
        return memmem(mem + off, (size_t)len, b, blen) != NULL;
    char *buf = malloc(BLOCK);
    int hit = !buf;
    while (!hit && len >= blen) {
        size_t want = len < BLOCK ? (size_t)len : BLOCK;
        ssize_t k = pread(fd, buf, want, (off_t)off);
        hit = k < (ssize_t)blen || memmem(buf, (size_t)k, b, blen);
        size_t step = hit ? 0 : (size_t)k - (blen - 1);
        off += step;
        len -= step;
    }
    free(buf);
    return hit;
}

/* A random boundary that no slice contains: 0, or -1. */
static int pick_boundary(struct http_resp *r, const char *mem, int fd,
                         const struct http_byterange *rg, int n)
{
    static const char hex[] = "0123456789abcdef";
    for (int tries = 0; tries < 4; tries++) {
        unsigned char rnd[16];
        if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
            return -1;
        for (size_t i = 0; i < sizeof rnd; i++) {
            r->boundary[2 * i] = hex[rnd[i] >> 4];
            r->boundary[2 * i + 1] = hex[rnd[i] & 15];
        }
        r->boundary[32] = '\0';
        int hit = 0;
        for (int i = 0; i < n && !hit; i++)
            hit = occurs(mem, fd, rg[i].first, rg[i].last - rg[i].first + 1, r->boundary, 32);
        if (!hit)
            return 0;
    }
    return -1;
}

/* The parts' texts and slices into r: the body's length, or 0. */
static uint64_t plan(struct http_resp *r, const char *mime, uint64_t size,
                     const struct http_byterange *rg, int n)
{
    size_t cap = (size_t)(n + 1) * (strlen(mime) + 160);
    if (!(r->parts = calloc((size_t)n + 1, sizeof *r->parts)) || !(r->body_alloc = malloc(cap)))
        return 0;
    size_t at = 0;
    uint64_t total = 0;
    for (int i = 0; i <= n; i++) {
        struct http_part *p = &r->parts[i];
        int k = i < n
                    ? snprintf(r->body_alloc + at, cap - at,
                               "%s--%s\r\nContent-Type: %s\r\nContent-Range: bytes "
                               "%llu-%llu/%llu\r\n\r\n",
                               i ? "\r\n" : "", r->boundary, mime, (unsigned long long)rg[i].first,
                               (unsigned long long)rg[i].last, (unsigned long long)size)
                    : snprintf(r->body_alloc + at, cap - at, "\r\n--%s--\r\n", r->boundary);
        *p = (struct http_part){at, (size_t)k, i < n ? rg[i].first : 0,
                                i < n ? rg[i].last - rg[i].first + 1 : 0};
        at += (size_t)k;
        total += (uint64_t)k + p->len;
    }
    r->nparts = n + 1;
    return total;
}

void http_serve_parts(struct http_worker *w, struct http_resp *r, const struct http_req *req,
                      struct fentry *e, const struct fentry *v, struct http_zcopy *z,
                      const char *hdrs, const struct http_byterange *rg, int n)
{
    uint64_t size = (uint64_t)v->st.st_size, total = 0;
    if (pick_boundary(r, z ? z->data : NULL, e->fd, rg, n) == 0)
        total = plan(r, v->mime, size, rg, n);
    if (!total) {
        http_entry_release(e);
        if (z)
            http_zcopy_release(z);
        http_error_page(w, r, req, 503);
        return;
    }
    char num[24];
    snprintf(num, sizeof num, "%llu", (unsigned long long)total);
    http_head_begin(w, r, 206);
    http_puts(r, "Content-Type: multipart/byteranges; boundary=");
    http_puts(r, r->boundary);
    http_puts(r, "\r\nContent-Length: ");
    http_puts(r, num);
    http_puts(r, "\r\n");
    http_file_headers(w, r, v);
    http_puts(r, hdrs);
    http_puts(r, "Accept-Ranges: bytes\r\n");
    http_head_end(r, req);
    if (req->method == HTTP_M_HEAD) {
        r->nparts = 0;
        http_entry_release(e);
        if (z)
            http_zcopy_release(z);
        return;
    }
    r->log_bytes = total;
    if (z) {
        http_entry_release(e);
        r->z = z;
    } else {
        r->ent = e;
        r->fd = e->fd;
    }
}

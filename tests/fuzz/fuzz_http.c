/* fuzz_http.c - the request-head parser and the chunked-body skipper
 * against themselves: fed in pieces they must reach the result they reach
 * fed whole, with the same fields, and every slice must lie inside the
 * head.  The bytes after a parsed head (or the whole input when it does not
 * parse) are then skipped as a chunked body, whole and in pieces.
 *
 * The input after its first byte is also checked as a Host value: one
 * accepted holds nothing that could make it a list, a path, userinfo or
 * another field, and the parser agrees with the validator.
 *
 * The first input byte chooses the piece sizes, max_header and the body
 * limit.  Bytes beyond what a call is given are poisoned, so ASan catches
 * a read past len even though the buffer holds the whole input. */
#include <sanitizer/asan_interface.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/http_int.h"

/* Piece sizes 1..16 from a xorshift seeded by the first byte. */
static size_t next_piece(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return (*x & 15) + 1;
}

static int str_same(struct http_str a, struct http_str b)
{
    return a.p == b.p && a.n == b.n;
}

static int same_req(const struct http_req *a, const struct http_req *b)
{
    return a->method == b->method && str_same(a->method_s, b->method_s) &&
           str_same(a->target, b->target) && str_same(a->line, b->line) && a->minor == b->minor &&
           a->has_host == b->has_host && a->conn_close == b->conn_close &&
           a->conn_keep == b->conn_keep && a->chunked == b->chunked &&
           a->content_length == b->content_length && str_same(a->if_none_match, b->if_none_match) &&
           str_same(a->if_modified_since, b->if_modified_since) && str_same(a->range, b->range);
}

/* s is absent, or lies inside [lo, hi). */
static int inside(struct http_str s, const char *lo, const char *hi)
{
    if (!s.p)
        return s.n == 0;
    return s.p >= lo && s.p + s.n <= hi;
}

static void check_req(const struct http_req *r, const char *buf, int rc)
{
    const char *end = buf + rc;
    if (!inside(r->line, buf, end) || !r->line.p || !inside(r->method_s, r->line.p, end) ||
        r->method_s.p != r->line.p || !r->method_s.n || !inside(r->target, r->line.p, end) ||
        !r->target.n || !inside(r->if_none_match, buf, end) ||
        !inside(r->if_modified_since, buf, end) || !inside(r->range, buf, end))
        abort();
    if (r->method < HTTP_M_GET || r->method > HTTP_M_UNKNOWN || (r->minor != 0 && r->minor != 1))
        abort();
    if (r->content_length < -1 || (r->chunked && r->content_length != -1))
        abort();
    if (r->minor == 1 && !r->has_host)
        abort();
}

static int parse_pieces(char *buf, size_t n, size_t max, uint32_t seed, struct http_req *r)
{
    size_t scan = 0, len = 0;
    int rc = 0;
    ASAN_POISON_MEMORY_REGION(buf, n);
    do {
        size_t k = next_piece(&seed);
        len = n - len < k ? n : len + k;
        ASAN_UNPOISON_MEMORY_REGION(buf, len);
        rc = http_parse_head(buf, len, max, &scan, r);
        if (rc == 0 && len >= max)
            abort();
    } while (rc == 0 && len < n);
    ASAN_UNPOISON_MEMORY_REGION(buf, n);
    return rc;
}

/* The head's result; fails unless whole and pieces agree. */
static int check_head(char *buf, size_t n, size_t max, uint32_t seed)
{
    struct http_req whole, parts;
    size_t scan = 0;
    int rc = http_parse_head(buf, n, max, &scan, &whole);
    if (rc != parse_pieces(buf, n, max, seed, &parts))
        abort();
    if (rc == 0 && n >= max)
        abort();
    if (rc < 0 && rc != -400 && rc != -414 && rc != -431 && rc != -505)
        abort();
    if (rc > 0) {
        if ((size_t)rc > n || (size_t)rc > max || !same_req(&whole, &parts))
            abort();
        check_req(&whole, buf, rc);
    }
    return rc;
}

struct skip {
    ssize_t rc; /* bytes consumed in all, or the error */
    int done;
    uint64_t total;
};

static struct skip skip_pieces(char *buf, size_t n, uint64_t limit, uint32_t seed)
{
    struct http_chunked c = {0};
    struct skip s = {0, 0, 0};
    size_t at = 0;
    ASAN_POISON_MEMORY_REGION(buf, n);
    while (at < n && !s.done) {
        size_t k = next_piece(&seed);
        if (k > n - at)
            k = n - at;
        ASAN_UNPOISON_MEMORY_REGION(buf + at, k);
        ssize_t rc = http_chunked_skip(&c, buf + at, k, limit, &s.done);
        ASAN_POISON_MEMORY_REGION(buf + at, k);
        if (rc < 0) {
            s.rc = rc;
            break;
        }
        if ((size_t)rc > k || ((size_t)rc < k && !s.done))
            abort();
        at += (size_t)rc;
        s.rc = (ssize_t)at;
    }
    ASAN_UNPOISON_MEMORY_REGION(buf, n);
    s.total = c.total;
    return s;
}

static void check_chunked(char *buf, size_t n, uint64_t limit, uint32_t seed)
{
    struct http_chunked c = {0};
    struct skip whole = {0, 0, 0};
    whole.rc = http_chunked_skip(&c, buf, n, limit, &whole.done);
    whole.total = c.total;
    struct skip parts = skip_pieces(buf, n, limit, seed);
    if (whole.rc != parts.rc)
        abort();
    if (whole.rc < 0) {
        if (whole.rc != -400 && whole.rc != -413)
            abort();
        return;
    }
    if (whole.done != parts.done || whole.total != parts.total || whole.total > limit ||
        (!whole.done && (size_t)whole.rc != n))
        abort();
}

/* What no valid Host may hold, whatever else the validator allows. */
static void check_host(const char *s, size_t n)
{
    if (!http_host_valid(s, n))
        return;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || strchr(",/@?#\\\"<>{}|^`", c))
            abort();
        if ((c == '[' && i != 0) || (c == ']' && s[0] != '['))
            abort();
    }
    char head[300];
    if (n > 200)
        return;
    int k = snprintf(head, sizeof head, "GET / HTTP/1.1\r\nHost: %.*s\r\n\r\n", (int)n, s);
    struct http_req r;
    size_t scan = 0;
    if (http_parse_head(head, (size_t)k, 8192, &scan, &r) != k)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint32_t seed = data[0] | 0x100u;
    size_t max = data[0] >> 4 ? (size_t)(data[0] >> 4) * 16 : 8192;
    uint64_t limit = data[0] & 1 ? 64 : 1 << 20;
    size_t n = size - 1;
    /* A copy of exactly n bytes, so that ASan sees any read past the end. */
    char *buf = malloc(n ? n : 1);
    if (!buf)
        abort();
    memcpy(buf, data + 1, n);
    int rc = check_head(buf, n, max, seed);
    size_t body = rc > 0 ? (size_t)rc : 0;
    check_chunked(buf + body, n - body, limit, seed);
    check_host(buf, n);
    free(buf);
    return 0;
}

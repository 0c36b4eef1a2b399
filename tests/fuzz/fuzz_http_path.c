/* fuzz_http_path.c - the request-target half of the HTTP server on hostile
 * input: http_target_split + http_path_resolve (against a simple
 * reference resolver, and for containment invariants), http_range and
 * http_ranges,
 * http_date_parse, http_etag_match, http_if_range, the escapers, and
 * the Location of a directory (a path that decodes back to the resolved
 * one and can never name another host).  The first input
 * byte picks the output buffer size and the file size; the rest is the
 * text. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/http_int.h"

#define DATE_MAX ((time_t)253402300799) /* the last second http_date can show */

/* ---- path resolution ----------------------------------------------------- */

struct ref_seg {
    size_t off, len;
};

static int hexv(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decode all of raw into dec first; -400 on a bad escape or a NUL. */
static long ref_decode(const char *raw, size_t n, char *dec)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (raw[i] == '\0')
            return -400;
        if (raw[i] != '%') {
            dec[k++] = raw[i];
            continue;
        }
        if (n - i < 3 || hexv(raw[i + 1]) < 0 || hexv(raw[i + 2]) < 0)
            return -400;
        int c = hexv(raw[i + 1]) << 4 | hexv(raw[i + 2]);
        if (c == 0)
            return -400;
        dec[k++] = (char)c;
        i += 2;
    }
    return (long)k;
}

/* The obvious, allocating version of http_path_resolve. */
static int ref_resolve(const char *raw, size_t n, char *out, size_t outsz, int *dir_form)
{
    char *dec = malloc(n + 1);
    struct ref_seg *st = malloc((n + 1) * sizeof *st);
    size_t depth = 0, seg = 0;
    long m = ref_decode(raw, n, dec);
    int rc = m < 0 ? (int)m : 0, last_real = 0;
    for (size_t i = 0; rc == 0 && i <= (size_t)m; i++) {
        if (i < (size_t)m && dec[i] != '/')
            continue;
        size_t len = i - seg;
        last_real = 0;
        if (len == 2 && dec[seg] == '.' && dec[seg + 1] == '.') {
            if (depth == 0)
                rc = -404;
            else
                depth--;
        } else if (len > 0 && !(len == 1 && dec[seg] == '.')) {
            st[depth++] = (struct ref_seg){seg, len};
            last_real = 1;
        }
        seg = i + 1;
    }
    size_t total = 0;
    for (size_t d = 0; rc == 0 && d < depth; d++) {
        if (total + (d > 0) + st[d].len > outsz - 1) {
            rc = -414;
            break;
        }
        if (d > 0)
            out[total++] = '/';
        memcpy(out + total, dec + st[d].off, st[d].len);
        total += st[d].len;
    }
    if (rc == 0) {
        out[total] = '\0';
        *dir_form = !last_real || depth == 0;
        rc = (int)total;
    }
    free(dec);
    free(st);
    return rc;
}

/* What any resolved path must look like. */
static void check_shape(const char *out, int rc, size_t outsz)
{
    size_t len = (size_t)rc;
    if (len >= outsz || strlen(out) != len)
        abort();
    if (len == 0)
        return;
    if (out[0] == '/' || out[len - 1] == '/' || strstr(out, "//"))
        abort();
    for (const char *p = out;;) {
        size_t seg = strcspn(p, "/");
        if ((seg == 1 && p[0] == '.') || (seg == 2 && p[0] == '.' && p[1] == '.'))
            abort();
        if (p[seg] == '\0')
            break;
        p += seg + 1;
    }
}

static void check_resolve(const char *raw, size_t n, size_t outsz)
{
    char *out = malloc(outsz), *ref = malloc(outsz);
    int dir = -1, ref_dir = -1;
    int rc = http_path_resolve(raw, n, out, outsz, &dir);
    int want = ref_resolve(raw, n, ref, outsz, &ref_dir);
    if (rc != want)
        abort();
    if (rc >= 0) {
        check_shape(out, rc, outsz);
        if (strcmp(out, ref) != 0 || dir != ref_dir)
            abort();
    }
    free(out);
    free(ref);
}

static int inside(const char *p, size_t n, const char *s, size_t sn)
{
    return p >= s && p + n <= s + sn;
}

static void check_target(const char *s, size_t n, size_t outsz)
{
    struct http_str path, query;
    int rc = http_target_split(s, n, &path, &query);
    if (rc != 0 && rc != -400)
        abort();
    check_resolve(s, n, outsz);
    if (rc < 0)
        return;
    if (path.n == 0 || path.p[0] != '/')
        abort();
    if (!inside(path.p, path.n, s, n) && !(path.n == 1 && strcmp(path.p, "/") == 0))
        abort();
    if (query.p ? !inside(query.p, query.n, s, n) : query.n != 0)
        abort();
    check_resolve(path.p, path.n, outsz);
}

/* ---- Locations ----------------------------------------------------------- */

static int pchar_or_slash(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("-._~!$&'()*+,;=:@%/", c));
}

static void check_location(const char *s, size_t n)
{
    struct http_str path, query;
    char rel[4096];
    int dir;
    if (http_target_split(s, n, &path, &query) < 0 ||
        http_path_resolve(path.p, path.n, rel, sizeof rel, &dir) <= 0)
        return;
    size_t need = http_dir_location(rel, &query, NULL, 0);
    size_t rl = strlen(rel);
    char *out = malloc(need + 1);
    if (!out || need > 3 * (rl + query.n) + 3 ||
        http_dir_location(rel, &query, out, need + 1) != need)
        abort();
    /* An absolute path, never "//host" or "/\host". */
    if (out[0] != '/' || out[1] == '/' || out[1] == '\\')
        abort();
    char *q = memchr(out, '?', need);
    size_t plen = q ? (size_t)(q - out) : need;
    if (!q != !query.p)
        abort();
    for (size_t i = 0; i < need; i++)
        if (!pchar_or_slash((unsigned char)out[i]) && !(out[i] == '?' && i >= plen))
            abort();
    /* The path decodes back to exactly "/" rel "/". */
    char *dec = malloc(plen + 1);
    size_t k = 0;
    for (size_t i = 0; i < plen; i++) {
        if (out[i] == '%') {
            if (i + 2 >= plen || hexv(out[i + 1]) < 0 || hexv(out[i + 2]) < 0)
                abort();
            dec[k++] = (char)(hexv(out[i + 1]) << 4 | hexv(out[i + 2]));
            i += 2;
        } else {
            dec[k++] = out[i];
        }
    }
    if (k != rl + 2 || dec[0] != '/' || dec[k - 1] != '/' || memcmp(dec + 1, rel, rl) != 0)
        abort();
    free(dec);
    free(out);
}

/* Escaped log text is printable ASCII without '"', and unescapes back. */
static void check_log_escape(const char *s, size_t n)
{
    char *out = malloc(4 * n + 1);
    size_t len = http_log_escape(s, n, out), k = 0;
    if (len > 4 * n || len < n)
        abort();
    for (size_t i = 0; i < len; i++, k++) {
        unsigned char c = (unsigned char)out[i];
        if (c < 0x20 || c > 0x7e || c == '"')
            abort();
        if (c == '\\') {
            if (i + 3 >= len || out[i + 1] != 'x' || hexv(out[i + 2]) < 0 || hexv(out[i + 3]) < 0 ||
                (hexv(out[i + 2]) << 4 | hexv(out[i + 3])) != (unsigned char)s[k])
                abort();
            i += 3;
        } else if (k >= n || s[k] != out[i]) {
            abort();
        }
    }
    if (k != n)
        abort();
    free(out);
}

static void check_if_range(const char *s, size_t n)
{
    int m = http_if_range(s, n, "\"abc\"", 5, 784111777, 784111778);
    if (m != 0 && m != 1)
        abort();
    /* A match is the tag itself or a date: never a weak tag. */
    if (m && n >= 2 && s[0] == 'W' && s[1] == '/')
        abort();
    if (m && memchr(s, '"', n < 3 ? n : 3) && !(n == 5 && memcmp(s, "\"abc\"", 5) == 0))
        abort();
}

/* ---- the rest ------------------------------------------------------------ */

static void check_range(const char *s, size_t n, uint64_t size)
{
    uint64_t first = 0, last = 0;
    int rc = http_range(s, n, size, &first, &last);
    if (rc != 0 && rc != 1 && rc != -416)
        abort();
    if (rc == 1 && (first > last || last >= size))
        abort();
    /* Several: sorted, disjoint and not adjacent, inside the file, no more
     * bytes than it has; one range is http_range's answer. */
    struct http_byterange rg[HTTP_RANGES_MAX];
    int k = http_ranges(s, n, size, rg);
    if (k < -416 || (k < 0 && k != -416) || k > HTTP_RANGES_MAX)
        abort();
    uint64_t total = 0;
    for (int i = 0; i < k; i++) {
        if (rg[i].first > rg[i].last || rg[i].last >= size)
            abort();
        if (i && rg[i].first <= rg[i - 1].last + 1)
            abort();
        total += rg[i].last - rg[i].first + 1;
    }
    if (k > 0 && total > size)
        abort();
    if (rc == 1 && (k != 1 || rg[0].first != first || rg[0].last != last))
        abort();
}

static void check_date(const char *s, size_t n)
{
    time_t t, back;
    if (http_date_parse(s, n, &t) != 0 || t < 0 || t > DATE_MAX)
        return;
    char out[HTTP_DATE_LEN + 1];
    http_date(t, out);
    if (strlen(out) != HTTP_DATE_LEN || http_date_parse(out, HTTP_DATE_LEN, &back) != 0 ||
        back != t)
        abort();
}

/* The input as a list against a tag made of its own bytes, and that tag
 * against itself. */
static void check_etag(const char *s, size_t n)
{
    char tag[24] = "W/\"";
    size_t k = 3;
    for (size_t i = 0; i < n && k < sizeof tag - 1; i++)
        if ((unsigned char)s[i] > 0x20 && s[i] != '"' && s[i] != 0x7f)
            tag[k++] = s[i];
    tag[k++] = '"';
    int m = http_etag_match(s, n, tag, k);
    if (m != 0 && m != 1)
        abort();
    if (!http_etag_match(tag, k, tag + 2, k - 2) || !http_etag_match(tag + 2, k - 2, tag, k))
        abort();
}

static void check_escapes(const char *s, size_t n, size_t outsz)
{
    char *out = malloc(outsz);
    size_t full = http_html_escape(s, n, NULL, 0);
    if (http_html_escape(s, n, out, outsz) != full || full < n)
        abort();
    if (memchr(out, '\0', outsz) == NULL)
        abort();
    full = http_pct_encode(s, n, n & 1, NULL, 0);
    if (http_pct_encode(s, n, n & 1, out, outsz) != full || full < n)
        abort();
    if (strlen(out) != (full < outsz ? full : outsz - 1))
        abort();
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint64_t sizes[8] = {
        0, 1, 2, 10, 1000, (uint64_t)1 << 40, UINT64_MAX, UINT64_MAX - 1};
    if (size < 1)
        return 0;
    /* Small buffers reach -414; 4096 is what a server would use. */
    size_t outsz = data[0] & 0x80 ? 4096 : (size_t)(data[0] & 0x1f) + 1;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    check_target(s, n, outsz);
    check_range(s, n, sizes[(data[0] >> 5) & 7]);
    check_date(s, n);
    check_etag(s, n);
    check_escapes(s, n, outsz);
    check_location(s, n);
    check_log_escape(s, n);
    check_if_range(s, n);
    if (!http_mime_type(s, n))
        abort();
    return 0;
}

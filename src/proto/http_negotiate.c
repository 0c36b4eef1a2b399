/* http_negotiate.c - Accept and Accept-Encoding (RFC 9110 §12.5.1,
 * §12.5.3): pure functions over the header values, no allocation, fuzzed
 * (tests/fuzz/fuzz_http_path.c). */
#include <string.h>

#include "proto/http_int.h"

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static int eq_nocase(struct http_str s, const char *lit)
{
    size_t n = strlen(lit);
    if (s.n != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s.p[i]) != lit[i])
            return 0;
    return 1;
}

static struct http_str trim(const char *p, size_t n)
{
    while (n && is_ows(*p))
        p++, n--;
    while (n && is_ows(p[n - 1]))
        n--;
    return (struct http_str){p, n};
}

/* qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ): thousandths,
 * or -1. */
static int qvalue(struct http_str v)
{
    if (v.n == 0 || v.n > 5 || (v.p[0] != '0' && v.p[0] != '1') || (v.n > 1 && v.p[1] != '.'))
        return -1;
    int q = (v.p[0] - '0') * 1000, scale = 100;
    for (size_t i = 2; i < v.n; i++, scale /= 10) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return -1;
        q += (v.p[i] - '0') * scale;
    }
    return q > 1000 ? -1 : q;
}

/* The first delim at or after s[i] outside a quoted string, or n. */
static size_t next_delim(const char *s, size_t n, size_t i, char delim)
{
    int quoted = 0;
    for (; i < n; i++) {
        if (quoted && s[i] == '\\' && i + 1 < n)
            i++;
        else if (s[i] == '"')
            quoted = !quoted;
        else if (!quoted && s[i] == delim)
            break;
    }
    return i;
}

/* The q of the parameters p[0..n) (each ";name=value", p[0] the first
 * ';'), 1000 without one. */
static int params_q(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t end = next_delim(p, n, i + 1, ';');
        struct http_str prm = trim(p + i + 1, end - i - 1);
        const char *eq = memchr(prm.p, '=', prm.n);
        if (eq) {
            struct http_str name = trim(prm.p, (size_t)(eq - prm.p));
            if (eq_nocase(name, "q"))
                return qvalue(trim(eq + 1, prm.n - (size_t)(eq + 1 - prm.p)));
        }
        i = end;
    }
    return 1000;
}

int http_qlist_next(struct http_str *rest, struct http_qitem *it)
{
    for (;;) {
        if (rest->n == 0)
            return 0;
        size_t end = next_delim(rest->p, rest->n, 0, ',');
        struct http_str el = trim(rest->p, end);
        rest->p += end < rest->n ? end + 1 : end;
        rest->n -= end < rest->n ? end + 1 : end;
        if (el.n == 0)
            continue;
        size_t nlen = next_delim(el.p, el.n, 0, ';');
        it->name = trim(el.p, nlen);
        it->q = nlen < el.n ? params_q(el.p + nlen, el.n - nlen) : 1000;
        if (it->name.n)
            return 1;
    }
}

int http_accept_json(const char *s, size_t n)
{
    struct http_str rest = {s, n};
    struct http_qitem it;
    int json = 0, html = -1, text = -1, any = -1;
    while (http_qlist_next(&rest, &it)) {
        if (it.q < 0)
            continue;
        if (eq_nocase(it.name, "application/json"))
            json = it.q > json ? it.q : json;
        else if (eq_nocase(it.name, "text/html"))
            html = it.q > html ? it.q : html;
        else if (eq_nocase(it.name, "text/*"))
            text = it.q > text ? it.q : text;
        else if (eq_nocase(it.name, "*/*"))
            any = it.q > any ? it.q : any;
    }
    /* The most specific range that matches HTML decides its q. */
    int hq = html >= 0 ? html : text >= 0 ? text : any >= 0 ? any : 0;
    return json > 0 && json >= hq;
}

static int coding(struct http_str name)
{
    if (eq_nocase(name, "gzip") || eq_nocase(name, "x-gzip"))
        return HTTP_ENC_GZIP;
    if (eq_nocase(name, "br"))
        return HTTP_ENC_BR;
    if (eq_nocase(name, "zstd"))
        return HTTP_ENC_ZSTD;
    if (eq_nocase(name, "identity"))
        return HTTP_ENC_IDENTITY;
    if (eq_nocase(name, "*"))
        return HTTP_ENC_N;
    return -1;
}

void http_accept_encoding(const char *s, size_t n, int q[HTTP_ENC_N])
{
    int listed[HTTP_ENC_N + 1] = {0}, qs[HTTP_ENC_N + 1] = {0};
    struct http_str rest = {s, s ? n : 0};
    struct http_qitem it;
    while (s && http_qlist_next(&rest, &it)) {
        int c = coding(it.name);
        if (c < 0 || it.q < 0)
            continue;
        /* Listed twice: the higher q (a client repeating itself). */
        if (!listed[c] || it.q > qs[c])
            qs[c] = it.q;
        listed[c] = 1;
    }
    for (int c = 0; c < HTTP_ENC_N; c++)
        q[c] = listed[c]                                      ? qs[c]
               : listed[HTTP_ENC_N] && c != HTTP_ENC_IDENTITY ? qs[HTTP_ENC_N]
                                                              : 0;
    if (!listed[HTTP_ENC_IDENTITY])
        q[HTTP_ENC_IDENTITY] = listed[HTTP_ENC_N] && qs[HTTP_ENC_N] == 0 ? 0 : 1;
}

int http_encoding_choose(const int q[HTTP_ENC_N], unsigned avail)
{
    static const int pref[] = {HTTP_ENC_BR, HTTP_ENC_ZSTD, HTTP_ENC_GZIP, HTTP_ENC_IDENTITY};
    int best = -406, bq = 0;
    avail |= 1u << HTTP_ENC_IDENTITY;
    for (size_t i = 0; i < sizeof pref / sizeof pref[0]; i++) {
        int c = pref[i];
        if ((avail & (1u << c)) && q[c] > bq) {
            best = c;
            bq = q[c];
        }
    }
    return best;
}

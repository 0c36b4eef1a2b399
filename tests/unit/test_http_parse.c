/* test_http_parse.c - request heads and chunked bodies (src/proto/http_parse.c).
 *
 * Every head is parsed twice, whole and fed a byte at a time into buffers of
 * exactly the bytes fed so far (so that ASan sees any read past len), and
 * both parses must agree on the result and on every field. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/http_int.h"
#include "runner.h"

#define MAX 8192

/* ---- helpers ----------------------------------------------------------- */

/* A slice as an offset into its buffer, so parses of two copies compare. */
static long long off(struct http_str s, const char *base)
{
    return s.p ? (long long)(s.p - base) : -1;
}

static void check_same(const struct http_req *a, const char *ba, const struct http_req *b,
                       const char *bb)
{
    const struct http_str *sa[] = {
        &a->method_s,          &a->target, &a->line,    &a->if_none_match,
        &a->if_modified_since, &a->range,  &a->if_range};
    const struct http_str *sb[] = {
        &b->method_s,          &b->target, &b->line,    &b->if_none_match,
        &b->if_modified_since, &b->range,  &b->if_range};
    for (size_t i = 0; i < sizeof sa / sizeof sa[0]; i++) {
        CHECK_EQ(off(*sa[i], ba), off(*sb[i], bb));
        CHECK_EQ(sa[i]->n, sb[i]->n);
    }
    CHECK_EQ(a->method, b->method);
    CHECK_EQ(a->minor, b->minor);
    CHECK_EQ(a->has_host, b->has_host);
    CHECK_EQ(a->conn_close, b->conn_close);
    CHECK_EQ(a->conn_keep, b->conn_keep);
    CHECK_EQ(a->chunked, b->chunked);
    CHECK_EQ(a->content_length, b->content_length);
}

/* Fed one byte at a time, each call on a fresh copy of exactly len bytes. */
static int parse_bytewise(const char *s, size_t n, size_t max, struct http_req *r, char **kept)
{
    size_t scan = 0;
    int rc = 0;
    *kept = NULL;
    for (size_t len = n ? 1 : 0; len <= n && rc == 0; len++) {
        char *copy = malloc(len ? len : 1);
        CHECK(copy != NULL);
        memcpy(copy, s, len);
        size_t before = scan;
        rc = http_parse_head(copy, len, max, &scan, r);
        CHECK(scan >= before);
        if (rc == 0)
            CHECK(len < max);
        if (rc > 0)
            *kept = copy;
        else
            free(copy);
    }
    return rc;
}

/* s[0..n) whole and byte by byte; the (agreed) result, *r from the whole
 * parse, which points into s. */
static int parse_n(const char *s, size_t n, size_t max, struct http_req *r)
{
    size_t scan = 0;
    struct http_req bytewise;
    char *kept;
    int rc = http_parse_head(s, n, max, &scan, r);
    CHECK(rc <= (int)n);
    int rc2 = parse_bytewise(s, n, max, &bytewise, &kept);
    if (rc != rc2)
        iop_test_fail(__FILE__, __LINE__, "whole %d, bytewise %d: '%.*s'", rc, rc2, (int)n, s);
    if (rc > 0) {
        check_same(r, s, &bytewise, kept);
        free(kept);
    }
    return rc;
}

static int parse_max(const char *s, size_t max, struct http_req *r)
{
    return parse_n(s, strlen(s), max, r);
}

static int parse(const char *s, struct http_req *r)
{
    return parse_max(s, MAX, r);
}

/* Just the result. */
static int status(const char *s)
{
    struct http_req r;
    return parse(s, &r);
}

static int str_is(struct http_str s, const char *want)
{
    return s.p && s.n == strlen(want) && memcmp(s.p, want, s.n) == 0;
}

#define CHECK_STR(s, want)                                                                         \
    do {                                                                                           \
        if (!str_is((s), (want)))                                                                  \
            iop_test_fail(__FILE__, __LINE__, "%s: '%.*s', want '%s'", #s, (int)(s).n,             \
                          (s).p ? (s).p : "", (want));                                             \
    } while (0)

#define CHECK_PARSES(s) CHECK_EQ(status(s), strlen(s))

/* A head: the request line, then "Host: h", then the given field lines. */
static int with_fields(const char *fields, struct http_req *r)
{
    static char buf[4096];
    snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: h\r\n%s\r\n", fields);
    return parse(buf, r);
}

static int field_status(const char *fields)
{
    struct http_req r;
    return with_fields(fields, &r);
}

/* ---- request line ------------------------------------------------------- */

IOP_TEST(http_get_basic, be)
{
    (void)be;
    struct http_req r;
    const char *s = "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
    CHECK_EQ(parse(s, &r), strlen(s));
    CHECK_EQ(r.method, HTTP_M_GET);
    CHECK_STR(r.method_s, "GET");
    CHECK_STR(r.target, "/index.html?q=1");
    CHECK_STR(r.line, "GET /index.html?q=1 HTTP/1.1");
    CHECK_EQ(r.minor, 1);
    CHECK_EQ(r.has_host, 1);
    CHECK_EQ(r.conn_close, 0);
    CHECK_EQ(r.conn_keep, 0);
    CHECK_EQ(r.chunked, 0);
    CHECK_EQ(r.content_length, -1);
    CHECK(r.if_none_match.p == NULL && r.if_none_match.n == 0);
    CHECK(r.if_modified_since.p == NULL && r.range.p == NULL);
}

IOP_TEST(http_methods, be)
{
    (void)be;
    static const struct {
        const char *m;
        int kind;
    } cases[] = {
        {"GET", HTTP_M_GET},         {"HEAD", HTTP_M_HEAD},
        {"POST", HTTP_M_KNOWN},      {"PUT", HTTP_M_KNOWN},
        {"DELETE", HTTP_M_KNOWN},    {"CONNECT", HTTP_M_KNOWN},
        {"OPTIONS", HTTP_M_OPTIONS}, {"TRACE", HTTP_M_KNOWN},
        {"PATCH", HTTP_M_KNOWN},     {"get", HTTP_M_UNKNOWN},
        {"Head", HTTP_M_UNKNOWN},    {"GETS", HTTP_M_UNKNOWN},
        {"GE", HTTP_M_UNKNOWN},      {"M-SEARCH", HTTP_M_UNKNOWN},
        {"BREW", HTTP_M_UNKNOWN},    {"!#$%&'*+-.^_`|~09azAZ", HTTP_M_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[128];
        struct http_req r;
        snprintf(buf, sizeof buf, "%s / HTTP/1.1\r\nHost: h\r\n\r\n", cases[i].m);
        CHECK_EQ(parse(buf, &r), strlen(buf));
        CHECK_EQ(r.method, cases[i].kind);
        CHECK_STR(r.method_s, cases[i].m);
    }
}

IOP_TEST(http_bad_request_line, be)
{
    (void)be;
    static const char *const bad[] = {
        "GE(T / HTTP/1.1\r\nHost: h\r\n\r\n",  /* not a token */
        "GE\"T / HTTP/1.1\r\nHost: h\r\n\r\n", /* not a token */
        "G\x80T / HTTP/1.1\r\nHost: h\r\n\r\n",
        " GET / HTTP/1.1\r\nHost: h\r\n\r\n",   /* no method */
        "GET  / HTTP/1.1\r\nHost: h\r\n\r\n",   /* two SP: empty target */
        "GET /  HTTP/1.1\r\nHost: h\r\n\r\n",   /* two SP before the version */
        "GET / HTTP/1.1 \r\nHost: h\r\n\r\n",   /* trailing SP */
        "GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n",   /* HTAB is no separator */
        "GET /\tHTTP/1.1\r\nHost: h\r\n\r\n",   /* HTAB in the target */
        "GET / HTTP/1.1\r\r\nHost: h\r\n\r\n",  /* bare CR */
        "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", /* SP in the target */
        "GET / \r\nHost: h\r\n\r\n",
        "GET /\r\nHost: h\r\n\r\n",
        "GET\r\nHost: h\r\n\r\n",
        "/ HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.1 extra\r\nHost: h\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (status(bad[i]) != -400)
            iop_test_fail(__FILE__, __LINE__, "case %zu: %d", i, status(bad[i]));
}

IOP_TEST(http_version, be)
{
    (void)be;
    struct http_req r;
    CHECK_EQ(parse("GET / HTTP/1.0\r\n\r\n", &r), 18);
    CHECK_EQ(r.minor, 0);
    CHECK_EQ(r.has_host, 0);
    CHECK_EQ(parse("GET / HTTP/1.1\r\nHost: h\r\n\r\n", &r), 27);
    CHECK_EQ(r.minor, 1);
    CHECK_EQ(parse("GET / HTTP/1.9\r\nHost: h\r\n\r\n", &r), 27);
    CHECK_EQ(r.minor, 1);
    CHECK_EQ(status("GET / HTTP/1.9\r\n\r\n"), -400); /* 1.x, x >= 1, needs Host */

    static const char *const v505[] = {"HTTP/2.0", "HTTP/0.9", "HTTP/3.1", "HTTP/9.9", "HTTP/0.0"};
    static const char *const v400[] = {"HTTP/1.10", "HTTP/1",   "HTTP/1.",  "http/1.1", "HTTP/1.x",
                                       "HTTP/a.1",  "HTTPS1.1", "HTTP/11",  "HTTP/1,1", "HTTP/+.1",
                                       "HTTP/ 1.1", "HTTP/2",   "HTTP/10.0"};
    char buf[128];
    for (size_t i = 0; i < sizeof v505 / sizeof v505[0]; i++) {
        snprintf(buf, sizeof buf, "GET / %s\r\nHost: h\r\n\r\n", v505[i]);
        CHECK_EQ(status(buf), -505);
    }
    for (size_t i = 0; i < sizeof v400 / sizeof v400[0]; i++) {
        snprintf(buf, sizeof buf, "GET / %s\r\nHost: h\r\n\r\n", v400[i]);
        if (status(buf) != -400)
            iop_test_fail(__FILE__, __LINE__, "%s: %d", v400[i], status(buf));
    }
}

IOP_TEST(http_target, be)
{
    (void)be;
    struct http_req r;
    CHECK_PARSES("GET http://example.com:8080/a?b HTTP/1.1\r\nHost: example.com\r\n\r\n");
    CHECK(parse("GET http://example.com:8080/a?b HTTP/1.1\r\nHost: x\r\n\r\n", &r) > 0);
    CHECK_STR(r.target, "http://example.com:8080/a?b");
    CHECK(parse("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", &r) > 0);
    CHECK_STR(r.target, "*");
    CHECK_EQ(r.method, HTTP_M_OPTIONS);
    /* Bytes above 0x7f are the path resolver's business, not ours. */
    CHECK(parse("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", &r) > 0);
    CHECK_STR(r.target, "/caf\xc3\xa9");
    CHECK_EQ(status("GET /a\x01 HTTP/1.1\r\nHost: x\r\n\r\n"), -400);
    CHECK_EQ(status("GET /a\x7f HTTP/1.1\r\nHost: x\r\n\r\n"), -400);
    CHECK_EQ(status("GET /a\x1b[0m HTTP/1.1\r\nHost: x\r\n\r\n"), -400);
}

IOP_TEST(http_nul_and_bare_cr, be)
{
    (void)be;
    static const char *const cases[] = {
        "GET /a\0b HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\0\r\n\r\n",
        "GET / HTTP/1.1\r\nHo\0st: h\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX: \0\r\n\r\n",
        "\0\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\n\r\r\n\r\n",
        "\r\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.1\rHost: h\r\n\r\n",
    };
    /* sizeof, not strlen: the NULs are part of the input. */
    static const size_t lens[] = {
        sizeof "GET /a\0b HTTP/1.1\r\nHost: h\r\n\r\n" - 1,
        sizeof "GET / HTTP/1.1\r\nHost: h\0\r\n\r\n" - 1,
        sizeof "GET / HTTP/1.1\r\nHo\0st: h\r\n\r\n" - 1,
        sizeof "GET / HTTP/1.1\r\nHost: h\r\nX: \0\r\n\r\n" - 1,
        sizeof "\0\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n" - 1,
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct http_req r;
        size_t n = i < sizeof lens / sizeof lens[0] ? lens[i] : strlen(cases[i]);
        int rc = parse_n(cases[i], n, MAX, &r);
        if (rc != -400)
            iop_test_fail(__FILE__, __LINE__, "case %zu: %d", i, rc);
    }
}

/* ---- line ends ---------------------------------------------------------- */

IOP_TEST(http_line_ends, be)
{
    (void)be;
    struct http_req r;
    const char *lf = "GET /x HTTP/1.1\nHost: h\nRange: bytes=0-1\n\n";
    CHECK_EQ(parse(lf, &r), strlen(lf));
    CHECK_STR(r.line, "GET /x HTTP/1.1");
    CHECK_STR(r.range, "bytes=0-1");
    const char *mixed = "GET /x HTTP/1.1\r\nHost: h\nRange: bytes=0-1\r\n\n";
    CHECK_EQ(parse(mixed, &r), strlen(mixed));
    CHECK_STR(r.range, "bytes=0-1");
    CHECK_EQ(parse("GET / HTTP/1.0\n\r\n", &r), 17);
    CHECK_EQ(parse("GET / HTTP/1.0\r\n\n", &r), 17);
    CHECK_STR(r.line, "GET / HTTP/1.0");
}

IOP_TEST(http_leading_empty_lines, be)
{
    (void)be;
    struct http_req r;
    const char *s = "\r\n\n\r\n\nGET /a HTTP/1.0\r\n\r\n";
    CHECK_EQ(parse(s, &r), strlen(s));
    CHECK_STR(r.line, "GET /a HTTP/1.0");
    CHECK_EQ(r.line.p - s, 6);
    CHECK_STR(r.target, "/a");
    /* Only empty lines so far: still waiting for a request line. */
    CHECK_EQ(status("\r\n\r\n\n\n\r\n"), 0);
    CHECK_EQ(status("\r\n"), 0);
    CHECK_EQ(status(""), 0);
}

IOP_TEST(http_pipelined, be)
{
    (void)be;
    struct http_req r;
    const char *a = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n";
    const char *b = "HEAD /2 HTTP/1.1\nHost: h\nConnection: close\n\n";
    const char *c = "GET /3 HTTP/1.0\r\n\r\n";
    char buf[256];
    snprintf(buf, sizeof buf, "%s%s%s", a, b, c);
    size_t off = 0;
    const char *want[] = {"/1", "/2", "/3"};
    size_t lens[] = {strlen(a), strlen(b), strlen(c)};
    for (int i = 0; i < 3; i++) {
        int rc = parse(buf + off, &r);
        CHECK_EQ(rc, lens[i]);
        CHECK_STR(r.target, want[i]);
        CHECK_EQ(r.conn_close, i == 1);
        off += (size_t)rc;
    }
    CHECK_EQ(off, strlen(buf));
    /* A pipelined head's blank line found in the same bytes as the first
     * one's must not confuse the search (LF then CRLF, then LF). */
    const char *d = "GET / HTTP/1.0\n\n\r\nGET / HTTP/1.0\r\n\r\n";
    CHECK_EQ(status(d), 16);
}

/* ---- header fields ------------------------------------------------------ */

IOP_TEST(http_bad_field_lines, be)
{
    (void)be;
    static const char *const bad[] = {
        "Host : h\r\n",           /* SP before the colon */
        "X-A\t: 1\r\n",           /* HTAB before the colon */
        "X-A 1\r\n",              /* no colon */
        "X-A\r\n",                /* no colon */
        ": v\r\n",                /* no name */
        "X(A): 1\r\n",            /* not a token */
        "X-A: 1\r\n folded\r\n",  /* obs-fold */
        "X-A: 1\r\n\tfolded\r\n", /* obs-fold */
        "X-A: a\x01z\r\n",        /* CTL in a value */
        "X-A: a\x7fz\r\n",        /* DEL in a value */
        "X\x80: 1\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (field_status(bad[i]) != -400)
            iop_test_fail(__FILE__, __LINE__, "case %zu: %d", i, field_status(bad[i]));
    /* Whitespace between the request line and the first field. */
    CHECK_EQ(status("GET / HTTP/1.1\r\n Host: h\r\n\r\n"), -400);
    CHECK_EQ(status("GET / HTTP/1.0\r\n \r\n\r\n"), -400);
    /* What is fine: odd but valid names, HTAB and obs-text in values, an
     * empty value, no OWS at all. */
    CHECK(field_status("X-!#$%&'*+.^_`|~: v\r\n") > 0);
    CHECK(field_status("X-A: a\tb \xff\r\n") > 0);
    CHECK(field_status("X-A:\r\n") > 0);
    CHECK(field_status("X-A:v\r\n") > 0);
}

IOP_TEST(http_host, be)
{
    (void)be;
    struct http_req r;
    CHECK_EQ(status("GET / HTTP/1.1\r\n\r\n"), -400);
    CHECK_EQ(status("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), -400);
    CHECK_EQ(status("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), -400);
    CHECK_EQ(status("GET / HTTP/1.0\r\nHost: a\r\nHOST: b\r\n\r\n"), -400);
    CHECK(parse("GET / HTTP/1.1\r\nhOsT:a\r\n\r\n", &r) > 0);
    CHECK_EQ(r.has_host, 1);
    CHECK(parse("GET / HTTP/1.1\r\nHost:\r\n\r\n", &r) > 0); /* empty is allowed */
    CHECK_EQ(r.has_host, 1);
    CHECK(parse("GET / HTTP/1.0\r\nHost: a\r\n\r\n", &r) > 0);
    CHECK_EQ(r.has_host, 1);
    CHECK(parse("GET / HTTP/1.0\r\n\r\n", &r) > 0);
    CHECK_EQ(r.has_host, 0);
    CHECK_EQ(status("GET / HTTP/1.1\r\nHosts: a\r\n\r\n"), -400);
}

static const struct {
    const char *host;
    int valid;
} hosts[] = {
    {"", 1},
    {"a", 1},
    {"example.com", 1},
    {"example.com:8080", 1},
    {"h:", 1}, /* port = *DIGIT */
    {"127.0.0.1", 1},
    {"127.0.0.1:80", 1},
    {"999.1.1.1", 1}, /* not IPv4, but a reg-name */
    {"xn--bcher-kva.example", 1},
    {"a%20b", 1},
    {"a-b_c~d!$&'()*+;=", 1},
    {"[::1]", 1},
    {"[::1]:8000", 1},
    {"[2001:db8::1]", 1},
    {"[::ffff:1.2.3.4]", 1},
    {"[v1.x]", 1},
    {"[v1f.a:b]:1", 1},
    {"a b", 0},
    {"a/b", 0},
    {"a@b", 0},
    {"u:p@h", 0},
    {"[::1", 0},
    {"::1", 0},
    {"[::1]x", 0},
    {"[::1]:x", 0},
    {"[]", 0},
    {"[fe80::1%eth0]", 0},
    {"[fe80::1%25eth0]", 0},
    {"[1.2.3.4]", 0},
    {"[::1]]", 0},
    {"[v1]", 0},
    {"[v.x]", 0},
    {"[vz.x]", 0},
    {"[v1.]", 0},
    {"[v1.a,b]", 0},
    {"h:80:80", 0},
    {"h:8a", 0},
    {"h:-1", 0},
    {"a, b", 0},
    {"a,b", 0},
    {"a%2", 0},
    {"a%zz", 0},
    {"a\\b", 0},
    {"a\"b", 0},
    {"a?b", 0},
    {"a#b", 0},
    {"caf\xc3\xa9", 0},
    {"a\tb", 0},
    {"a[b]", 0},
    {":80", 1}, /* an empty reg-name is RFC 3986's */
};

IOP_TEST(http_host_values, be)
{
    (void)be;
    char buf[256];
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
        const char *h = hosts[i].host;
        if (http_host_valid(h, strlen(h)) != hosts[i].valid)
            iop_test_fail(__FILE__, __LINE__, "Host '%s': want %s", h,
                          hosts[i].valid ? "valid" : "invalid");
        snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", h);
        int rc = status(buf);
        if (hosts[i].valid ? rc <= 0 : rc != -400)
            iop_test_fail(__FILE__, __LINE__, "Host '%s': parse %d", h, rc);
        snprintf(buf, sizeof buf, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", h);
        rc = status(buf);
        if (hosts[i].valid ? rc <= 0 : rc != -400)
            iop_test_fail(__FILE__, __LINE__, "1.0 Host '%s': parse %d", h, rc);
    }
    /* Only the slice is read: what follows it does not count. */
    CHECK_EQ(http_host_valid("[::1]junk", 5), 1);
    CHECK_EQ(http_host_valid("a%41", 3), 0);
    CHECK_EQ(http_host_valid("[::1\0]", 6), 0);
    /* Every IPv6 literal of the maximal length still fits. */
    const char *longest = "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535";
    CHECK_EQ(http_host_valid(longest, strlen(longest)), 1);
}

IOP_TEST(http_connection, be)
{
    (void)be;
    static const struct {
        const char *fields;
        int close, keep;
    } cases[] = {
        {"", 0, 0},
        {"Connection: close\r\n", 1, 0},
        {"connection: CLOSE\r\n", 1, 0},
        {"Connection: Keep-Alive\r\n", 0, 1},
        {"Connection: upgrade, close\r\n", 1, 0},
        {"Connection:  close ,\tkeep-alive \r\n", 1, 1},
        {"Connection: keep-alive\r\nConnection: close\r\n", 1, 1},
        {"Connection: ,, keep-alive,\r\n", 0, 1},
        {"Connection: closed, keep-alive-x\r\n", 0, 0},
        {"Connection: \"close\"\r\n", 0, 0},
        {"X-Connection: close\r\n", 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct http_req r;
        CHECK(with_fields(cases[i].fields, &r) > 0);
        if (r.conn_close != cases[i].close || r.conn_keep != cases[i].keep)
            iop_test_fail(__FILE__, __LINE__, "case %zu: close %d keep %d", i, r.conn_close,
                          r.conn_keep);
    }
}

IOP_TEST(http_content_length, be)
{
    (void)be;
    static const struct {
        const char *fields;
        long long want; /* -400: rejected */
    } cases[] = {
        {"", -1},
        {"Content-Length: 0\r\n", 0},
        {"content-length: 10\r\n", 10},
        {"Content-Length:  42 \t\r\n", 42},
        {"Content-Length: 007\r\n", 7},
        {"Content-Length: 9223372036854775807\r\n", INT64_MAX},
        {"Content-Length: 9223372036854775808\r\n", -400},
        {"Content-Length: 99999999999999999999999\r\n", -400},
        {"Content-Length: 5\r\nContent-Length: 5\r\n", 5},
        {"Content-Length: 5\r\nContent-Length: 005\r\n", 5},
        {"Content-Length: 5\r\nContent-Length: 6\r\n", -400},
        {"Content-Length: 5, 5\r\n", 5},
        {"Content-Length: 5,5,5\r\nContent-Length: 5\r\n", 5},
        {"Content-Length: 5, 6\r\n", -400},
        {"Content-Length: 5,\r\n", -400},
        {"Content-Length: ,5\r\n", -400},
        {"Content-Length:\r\n", -400},
        {"Content-Length: -1\r\n", -400},
        {"Content-Length: +5\r\n", -400},
        {"Content-Length: 5 5\r\n", -400},
        {"Content-Length: 0x10\r\n", -400},
        {"Content-Length: 1e3\r\n", -400},
        {"Content-Length: five\r\n", -400},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct http_req r;
        int rc = with_fields(cases[i].fields, &r);
        long long got = rc < 0 ? rc : r.content_length;
        if (got != cases[i].want)
            iop_test_fail(__FILE__, __LINE__, "case %zu: %lld, want %lld", i, got, cases[i].want);
    }
}

IOP_TEST(http_transfer_encoding, be)
{
    (void)be;
    static const struct {
        const char *fields;
        int want; /* 1 chunked, 0 not, -400 */
    } cases[] = {
        {"", 0},
        {"Transfer-Encoding: chunked\r\n", 1},
        {"transfer-encoding: CHUNKED\r\n", 1},
        {"Transfer-Encoding: gzip, chunked\r\n", 1},
        {"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", 1},
        {"Transfer-Encoding: chunked , \r\n", 1},
        {"Transfer-Encoding: chunked, gzip\r\n", -400},
        {"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n", -400},
        {"Transfer-Encoding: gzip\r\n", -400},
        {"Transfer-Encoding: chunkedx\r\n", -400},
        {"Transfer-Encoding:\r\n", -400},
        {"Transfer-Encoding: ,\r\n", -400},
        {"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", -400},
        {"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", -400},
        {"Content-Length: 0\r\nTransfer-Encoding: gzip\r\n", -400},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct http_req r;
        int rc = with_fields(cases[i].fields, &r);
        int got = rc < 0 ? rc : (int)r.chunked;
        if (got != cases[i].want)
            iop_test_fail(__FILE__, __LINE__, "case %zu: %d, want %d", i, got, cases[i].want);
        if (rc > 0)
            CHECK_EQ(r.content_length, -1);
    }
}

IOP_TEST(http_conditional_fields, be)
{
    (void)be;
    struct http_req r;
    CHECK(with_fields("If-None-Match:  \"a\", W/\"b\" \t\r\n"
                      "if-modified-since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
                      "RANGE:bytes=0-99\r\n"
                      "If-None-Match: \"later\"\r\n"
                      "Range: bytes=5-\r\n",
                      &r) > 0);
    CHECK_STR(r.if_none_match, "\"a\", W/\"b\"");
    CHECK_STR(r.if_modified_since, "Sun, 06 Nov 1994 08:49:37 GMT");
    CHECK_STR(r.range, "bytes=0-99");
    /* An empty value is present, not absent: the first occurrence wins. */
    CHECK(with_fields("Range: \r\nRange: bytes=1-2\r\n", &r) > 0);
    CHECK(r.range.p != NULL);
    CHECK_EQ(r.range.n, 0);
    CHECK(with_fields("If-Range:  \"x\" \r\nIf-Range: \"y\"\r\n", &r) > 0);
    CHECK_STR(r.if_range, "\"x\"");
    CHECK(with_fields("X-Range: bytes=1-2\r\n", &r) > 0);
    CHECK(r.range.p == NULL && r.if_none_match.p == NULL && r.if_modified_since.p == NULL &&
          r.if_range.p == NULL);
}

IOP_TEST(http_negotiation_fields, be)
{
    (void)be;
    struct http_req r;
    CHECK(with_fields("ACCEPT-Encoding: br;q=0.5, gzip \r\n"
                      "Accept: application/json\r\n"
                      "Access-Control-Request-Headers: x-a, X-B\r\n"
                      "Accept-Encoding: zstd\r\n"
                      "Accept-Language: en\r\n",
                      &r) > 0);
    CHECK_STR(r.accept_encoding, "br;q=0.5, gzip");
    CHECK_STR(r.accept, "application/json");
    CHECK_STR(r.acr_headers, "x-a, X-B");
    CHECK(with_fields("Accepts: x\r\nAccept-Encodings: y\r\n", &r) > 0);
    CHECK(r.accept.p == NULL && r.accept_encoding.p == NULL && r.acr_headers.p == NULL);
}

/* ---- sizes -------------------------------------------------------------- */

/* "GET /aaa... HTTP/1.0\r\n" of exactly n bytes, then tail. */
static char *with_line(size_t n, const char *tail)
{
    size_t t = strlen(tail);
    char *s = malloc(n + t + 1);
    CHECK(s != NULL && n >= 17);
    memcpy(s, "GET /", 5);
    memset(s + 5, 'a', n - 5 - 11);
    memcpy(s + n - 11, " HTTP/1.0\r\n", 11);
    memcpy(s + n, tail, t + 1);
    return s;
}

IOP_TEST(http_size_limits, be)
{
    (void)be;
    struct http_req r;
    /* A head of exactly max_header bytes is fine, one more is not. */
    char *s = with_line(100, "\n");
    CHECK_EQ(parse_max(s, 101, &r), 101);
    CHECK_EQ(parse_max(s, 100, &r), -431);
    free(s);

    /* The request line alone does not fit: 414, at once. */
    s = with_line(200, "\n");
    CHECK_EQ(parse_max(s, 100, &r), -414);
    CHECK_EQ(parse_n(s, 100, 100, &r), -414);
    CHECK_EQ(parse_n(s, 99, 100, &r), 0);
    CHECK_EQ(parse_max(s, 199, &r), -414); /* its LF is byte 199 */
    CHECK_EQ(parse_max(s, 200, &r), -431);
    CHECK_EQ(parse_max(s, 201, &r), 201);
    free(s);

    /* Fields too long after a request line that fits: 431, at once. */
    size_t big = 300;
    char *f = malloc(big + 64);
    CHECK(f != NULL);
    snprintf(f, big + 64, "GET / HTTP/1.1\r\nHost: h\r\nX: ");
    size_t at = strlen(f);
    memset(f + at, 'x', big - at);
    f[big] = '\0';
    CHECK_EQ(parse_max(f, 100, &r), -431);
    CHECK_EQ(parse_n(f, 100, 100, &r), -431);
    CHECK_EQ(parse_n(f, 99, 100, &r), 0);
    free(f);

    /* Skipped empty lines count. */
    CHECK_EQ(parse_max("\r\n\r\nGET / HTTP/1.0\r\n\r\n", 22, &r), 22);
    CHECK_EQ(parse_max("\r\n\r\nGET / HTTP/1.0\r\n\r\n", 21, &r), -431);
    CHECK_EQ(parse_max("\r\n\r\nGET / HTTP/1.0\r\n\r\n", 20, &r), -431);
    CHECK_EQ(parse_max("\r\n\r\nGET / HTTP/1.0\r\n\r\n", 19, &r), -414);
    CHECK_EQ(parse_max("\r\n\r\n\r\n\r\n\r\n\r\n", 8, &r), -414);
    /* A smaller max_header than the buffer: only its first bytes count. */
    CHECK_EQ(parse_n("GET / HTTP/1.0\r\n\r\nGET /", 23, 18, &r), 18);
    CHECK_EQ(parse_max("", 0, &r), -414);
}

/* Feed s a byte at a time into one buffer: the final result; fails unless
 * every call before was 0 and *scan never went back. */
static int feed_bytes(const char *s, size_t n, size_t max, struct http_req *r)
{
    size_t scan = 0;
    for (size_t len = 1; len <= n; len++) {
        size_t before = scan;
        int rc = http_parse_head(s, len, max, &scan, r);
        CHECK(scan >= before);
        if (rc != 0 || len == n)
            return rc;
    }
    return 0;
}

static char *long_head(size_t n, size_t empty_lines)
{
    char *s = malloc(n + 1);
    CHECK(s != NULL);
    size_t at = 0;
    for (size_t i = 0; i < empty_lines; i++) {
        memcpy(s + at, "\r\n", 2);
        at += 2;
    }
    at += (size_t)sprintf(s + at, "GET / HTTP/1.1\r\nHost: h\r\n");
    /* Short lines: many LFs, each one a candidate for the end. */
    while (at + 8 <= n) {
        memcpy(s + at, "a:\r\n", 4);
        at += 4;
    }
    while (at < n - 3)
        s[at++] = 'b';
    memcpy(s + at, ":\n\n", 3);
    s[n] = '\0';
    return s;
}

IOP_TEST(http_bytewise_linear, be)
{
    (void)be;
    struct http_req r;
    size_t sizes[] = {10000, 200000};
    long long budget_ms[] = {100, 1000}; /* quadratic would be ~20x and ~400x over */
    for (int i = 0; i < 2; i++) {
        for (size_t empty = 0; empty <= sizes[i] / 4; empty += sizes[i] / 4) {
            char *s = long_head(sizes[i], empty);
            long long t0 = iop_test_now_ms();
            CHECK_EQ(feed_bytes(s, sizes[i], sizes[i], &r), sizes[i]);
            long long ms = iop_test_now_ms() - t0;
            if (ms > budget_ms[i])
                iop_test_fail(__FILE__, __LINE__, "%zu bytes took %lld ms", sizes[i], ms);
            CHECK_EQ(r.has_host, 1);
            CHECK_EQ(feed_bytes(s, sizes[i], sizes[i] - 1, &r), -431);
            free(s);
        }
    }
}

/* Two pieces, split at every position: same result as whole. */
IOP_TEST(http_split_anywhere, be)
{
    (void)be;
    static const char *const heads[] = {
        "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /next",
        "\r\n\nHEAD /x HTTP/1.0\nRange: bytes=1-2\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\r\n\r\n",
    };
    for (size_t h = 0; h < sizeof heads / sizeof heads[0]; h++) {
        const char *s = heads[h];
        size_t n = strlen(s);
        struct http_req whole, split;
        size_t scan = 0;
        int want = http_parse_head(s, n, MAX, &scan, &whole);
        for (size_t k = 0; k <= n; k++) {
            scan = 0;
            int rc = http_parse_head(s, k, MAX, &scan, &split);
            if (rc == 0)
                rc = http_parse_head(s, n, MAX, &scan, &split);
            CHECK_EQ(rc, want);
            if (rc > 0)
                check_same(&whole, s, &split, s);
        }
    }
}

/* ---- chunked bodies ----------------------------------------------------- */

struct chunk_out {
    ssize_t rc; /* consumed in total, or the error */
    int done;
    uint64_t total;
};

/* Feed s[0..n) in pieces of at most step bytes, the piece starting at cut
 * first (cut 0: none), each into an exact-size copy. */
static struct chunk_out chunk_feed(const char *s, size_t n, size_t cut, size_t step, uint64_t limit)
{
    struct http_chunked c = {0};
    struct chunk_out o = {0, 0, 0};
    size_t at = 0;
    while (at < n && !o.done) {
        size_t k = at < cut ? cut - at : step;
        if (k > n - at)
            k = n - at;
        char *copy = malloc(k ? k : 1);
        CHECK(copy != NULL);
        memcpy(copy, s + at, k);
        ssize_t rc = http_chunked_skip(&c, copy, k, limit, &o.done);
        free(copy);
        if (rc < 0) {
            o.rc = rc;
            return o;
        }
        CHECK(o.done || (size_t)rc == k);
        at += (size_t)rc;
        o.rc = (ssize_t)at;
    }
    o.total = c.total;
    return o;
}

static void chunk_expect(struct chunk_out o, ssize_t want, int done, uint64_t total, size_t cut,
                         int line)
{
    if (o.rc != want || (want >= 0 && (o.done != done || o.total != total)))
        iop_test_fail(__FILE__, line, "cut %zu: rc %zd done %d total %llu, want %zd %d %llu", cut,
                      o.rc, o.done, (unsigned long long)o.total, want, done,
                      (unsigned long long)total);
}

/* Whole (cut 0), byte by byte, and split in two at every stride-th
 * position: all agree with the expected result (want -1: every byte
 * consumed). */
static void chunk_check_stride(const char *s, size_t n, size_t stride, uint64_t limit, ssize_t want,
                               int done, uint64_t total, int line)
{
    if (want == -1)
        want = (ssize_t)n;
    for (size_t cut = 0; cut <= n; cut += stride)
        chunk_expect(chunk_feed(s, n, cut, n ? n : 1, limit), want, done, total, cut, line);
    chunk_expect(chunk_feed(s, n, 0, 1, limit), want, done, total, 1, line);
}

static void chunk_check(const char *s, size_t n, uint64_t limit, ssize_t want, int done,
                        uint64_t total, int line)
{
    chunk_check_stride(s, n, 1, limit, want, done, total, line);
}

#define ALL (-1)
#define CHUNK(s, limit, want, done, total)                                                         \
    chunk_check((s), sizeof(s) - 1, (limit), (want), (done), (total), __LINE__)

IOP_TEST(http_chunked_valid, be)
{
    (void)be;
    const uint64_t L = 1 << 20;
    CHUNK("5\r\nhello\r\n0\r\n\r\n", L, 15, 1, 5);
    CHUNK("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n", L, 26, 1, 11);
    CHUNK("5\nhello\n0\n\n", L, 11, 1, 5);                        /* bare LF */
    CHUNK("A\r\n0123456789\r\n0\r\n\r\n", L, 20, 1, 10);          /* hex, upper */
    CHUNK("a\r\n0123456789\r\n00\r\n\r\n", L, 21, 1, 10);         /* lower, 00 */
    CHUNK("0010\r\n0123456789abcdef\r\n0\r\n\r\n", L, 29, 1, 16); /* leading zeros */
    CHUNK("0\r\n\r\n", L, 5, 1, 0);
    CHUNK("0\n\n", L, 3, 1, 0);
    CHUNK("3;name=value;x=\"q;\\\"\"\r\nabc\r\n0;last\r\n\r\n", L, ALL, 1, 3);
    CHUNK("3 ;a\r\nabc\r\n0\t\r\n\r\n", L, ALL, 1, 3); /* BWS before ; */
    CHUNK("3\r\nabc\r\n0\r\nX-Trailer: 1\r\nY: 2\n\r\nrest", L, 32, 1, 3);
    CHUNK("5\r\n\r\n\0\r\n\r\n0\r\n\r\n", L, 15, 1, 5); /* data is opaque */
    /* Not finished yet: everything consumed, not done. */
    CHUNK("5\r\nhel", L, 6, 0, 3);
    CHUNK("5\r\nhello\r\n0\r\nX: 1\r\n", L, ALL, 0, 5);
    CHUNK("", L, 0, 0, 0);
    /* Exactly at the limit. */
    CHUNK("5\r\nhello\r\n5\r\nhello\r\n0\r\n\r\n", 10, 25, 1, 10);
}

IOP_TEST(http_chunked_bad, be)
{
    (void)be;
    const uint64_t L = 1 << 20;
    CHUNK("\r\n", L, -400, 0, 0);               /* no size */
    CHUNK("x\r\n", L, -400, 0, 0);              /* not hex */
    CHUNK("-1\r\n", L, -400, 0, 0);             /* not hex */
    CHUNK(";a\r\n0\r\n\r\n", L, -400, 0, 0);    /* ext without size */
    CHUNK("5x\r\nhello\r\n", L, -400, 0, 0);    /* junk after the size */
    CHUNK("5\rhello\r\n", L, -400, 0, 0);       /* bare CR */
    CHUNK("5;a\0\r\nhello\r\n", L, -400, 0, 0); /* NUL in an extension */
    CHUNK("5\r\nhelloX\r\n", L, -400, 0, 0);    /* no line end after data */
    CHUNK("5\r\nhello\rX", L, -400, 0, 0);
    CHUNK("0\r\nX: 1\rY\r\n\r\n", L, -400, 0, 0); /* bare CR in a trailer */
    CHUNK("0\r\n\rX", L, -400, 0, 0);
    CHUNK("0\r\nX\0\r\n\r\n", L, -400, 0, 0);
    /* 16 hex digits fit, 17 significant ones do not. */
    CHUNK("10000000000000000\r\n", UINT64_MAX, -400, 0, 0);
    CHUNK("000000000000000000000001\r\nx\r\n0\r\n\r\n", L, ALL, 1, 1);
    CHUNK("ffffffffffffffff\r\n", L, -413, 0, 0);
    /* The limit: on the size line that would pass it. */
    CHUNK("5\r\nhello\r\n6\r\n", 10, -413, 0, 0);
    CHUNK("b\r\n", 10, -413, 0, 0);
    CHUNK("1\r\n", 0, -413, 0, 0);
}

IOP_TEST(http_chunked_long_lines, be)
{
    (void)be;
    /* A size line with endless extensions, and endless trailers, are
     * refused rather than skipped forever. */
    size_t n = 10000;
    char *s = malloc(n);
    CHECK(s != NULL);
    memset(s, 'e', n);
    memcpy(s, "1;", 2);
    chunk_check_stride(s, n, 97, 1 << 20, -400, 0, 0, __LINE__);
    memcpy(s, "0\r\n", 3);
    for (size_t i = 3; i + 1 < n; i += 2)
        memcpy(s + i, "x\n", 2);
    chunk_check_stride(s, n, 97, 1 << 20, -400, 0, 0, __LINE__);
    free(s);
    /* Long, but within bounds. */
    char ok[1200];
    memcpy(ok, "1;", 2);
    memset(ok + 2, 'e', 1000);
    memcpy(ok + 1002, "\r\nx\r\n0\r\nT: ", 11);
    memset(ok + 1013, 't', 150);
    memcpy(ok + 1163, "\r\n\r\n", 4);
    chunk_check(ok, 1167, 1 << 20, 1167, 1, 1, __LINE__);
}

IOP_TEST(http_chunked_done_stays_done, be)
{
    (void)be;
    struct http_chunked c = {0};
    int done = 0;
    CHECK_EQ(http_chunked_skip(&c, "0\r\n\r\nabc", 8, 10, &done), 5);
    CHECK_EQ(done, 1);
    CHECK_EQ(http_chunked_skip(&c, "abc", 3, 10, &done), 0);
    CHECK_EQ(done, 1);
}

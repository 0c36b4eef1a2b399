/* test_http_negotiate.c - Accept and Accept-Encoding (src/proto/
 * http_negotiate.c): q-lists, the JSON-or-HTML choice, and which coding a
 * response goes out in.  Pure functions: the tests run once. */
#include <stdio.h>
#include <string.h>

#include "proto/http_int.h"
#include "runner.h"

static const char *names[HTTP_ENC_N] = {"identity", "gzip", "zstd", "br"};

IOP_TEST(qlist_elements, be)
{
    (void)be;
    const char *v = " , text/html;level=1;q=0.5 ,, a/b;x=\"1,2;q=0\";Q=0.25 , c ; q=1.000, "
                    "d;q=1.5, e;q=0.1234, f;q=, g;q=0.";
    struct http_str rest = {v, strlen(v)};
    struct http_qitem it;
    static const struct {
        const char *name;
        int q;
    } want[] = {{"text/html", 500}, {"a/b", 250}, {"c", 1000}, {"d", -1},
                {"e", -1},          {"f", -1},    {"g", 0}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        CHECK(http_qlist_next(&rest, &it) == 1);
        if (it.name.n != strlen(want[i].name) || memcmp(it.name.p, want[i].name, it.name.n) ||
            it.q != want[i].q)
            iop_test_fail(__FILE__, __LINE__, "element %zu: '%.*s' q %d, want '%s' q %d", i,
                          (int)it.name.n, it.name.p, it.q, want[i].name, want[i].q);
    }
    CHECK(http_qlist_next(&rest, &it) == 0);
    rest = (struct http_str){"", 0};
    CHECK(http_qlist_next(&rest, &it) == 0);
}

IOP_TEST(accept_json, be)
{
    (void)be;
    static const struct {
        const char *accept;
        int json;
    } cases[] = {
        {"application/json", 1},
        {"Application/JSON", 1},
        {"application/json, */*", 1},
        {"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", 0},
        {"*/*", 0},
        {"application/json;q=0.5, text/html", 0},
        {"text/html;q=0.5, application/json", 1},
        {"application/json;q=0", 0},
        {"application/json;q=0.9, */*;q=1", 0},
        {"application/json;q=0.9, text/*;q=0.8, */*;q=1", 1},
        {"application/jsonx", 0},
        {"", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (http_accept_json(cases[i].accept, strlen(cases[i].accept)) != cases[i].json)
            iop_test_fail(__FILE__, __LINE__, "'%s': want %d", cases[i].accept, cases[i].json);
}

#define ALL ((1u << HTTP_ENC_GZIP) | (1u << HTTP_ENC_ZSTD) | (1u << HTTP_ENC_BR))
#define GZ  (1u << HTTP_ENC_GZIP)

IOP_TEST(accept_encoding_choice, be)
{
    (void)be;
    static const struct {
        const char *ae; /* NULL: no header */
        unsigned avail;
        int want; /* HTTP_ENC_* or -406 */
    } cases[] = {
        {NULL, ALL, HTTP_ENC_IDENTITY},
        {"", ALL, HTTP_ENC_IDENTITY},
        {"gzip", ALL, HTTP_ENC_GZIP},
        {"gzip, deflate, br, zstd", ALL, HTTP_ENC_BR},
        {"gzip, deflate, br, zstd", GZ, HTTP_ENC_GZIP},
        {"gzip, zstd", ALL, HTTP_ENC_ZSTD},
        {"br;q=0.5, gzip", ALL, HTTP_ENC_GZIP},
        {"gzip;q=0.5", ALL, HTTP_ENC_GZIP},
        {"gzip;q=0.5, identity", ALL, HTTP_ENC_IDENTITY},
        {"X-GZIP", ALL, HTTP_ENC_GZIP},
        {"*", ALL, HTTP_ENC_BR},
        {"*;q=0.5, br;q=0", ALL, HTTP_ENC_ZSTD},
        {"gzip;q=0", GZ, HTTP_ENC_IDENTITY},
        {"identity;q=0", 0, -406},
        {"identity;q=0", GZ, -406},
        {"identity;q=0, gzip", GZ, HTTP_ENC_GZIP},
        {"*;q=0", GZ, -406},
        {"*;q=0, identity", GZ, HTTP_ENC_IDENTITY},
        {"*;q=0, gzip;q=0.1", GZ, HTTP_ENC_GZIP},
        {"gzip;q=bogus", GZ, HTTP_ENC_IDENTITY},
        {"compress, deflate", ALL, HTTP_ENC_IDENTITY},
        {"gzip;q=0, gzip;q=1", GZ, HTTP_ENC_GZIP},
        {"br ; q = 0.9 ; foo=bar, gzip;q=0.8", ALL, HTTP_ENC_BR},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int q[HTTP_ENC_N];
        const char *ae = cases[i].ae;
        http_accept_encoding(ae, ae ? strlen(ae) : 0, q);
        int got = http_encoding_choose(q, cases[i].avail);
        if (got != cases[i].want)
            iop_test_fail(__FILE__, __LINE__, "'%s' (avail %#x): %s, want %s", ae ? ae : "(none)",
                          cases[i].avail, got < 0 ? "406" : names[got],
                          cases[i].want < 0 ? "406" : names[cases[i].want]);
    }
}

IOP_TEST(accept_encoding_q, be)
{
    (void)be;
    int q[HTTP_ENC_N];
    const char *ae = "br;q=0.7, *;q=0.3, identity;q=0.2";
    http_accept_encoding(ae, strlen(ae), q);
    CHECK_EQ(q[HTTP_ENC_BR], 700);
    CHECK_EQ(q[HTTP_ENC_GZIP], 300);
    CHECK_EQ(q[HTTP_ENC_ZSTD], 300);
    CHECK_EQ(q[HTTP_ENC_IDENTITY], 200);
    http_accept_encoding(NULL, 0, q);
    CHECK(q[HTTP_ENC_IDENTITY] > 0 && q[HTTP_ENC_GZIP] == 0 && q[HTTP_ENC_BR] == 0);
}

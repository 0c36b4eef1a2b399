/* fuzz_http_negotiate.c - Accept and Accept-Encoding on hostile input:
 * http_qlist_next stays inside its input and always advances,
 * http_accept_encoding gives q-values in 0..1000, http_encoding_choose
 * picks an available coding with the best q (or -406 exactly when none is
 * acceptable), http_accept_json is 0 or 1.  The first input byte is the
 * set of available codings; the rest is the header value. */
#include <stdint.h>
#include <stdlib.h>

#include "proto/http_int.h"

static void check_list(const char *s, size_t n)
{
    struct http_str rest = {s, n};
    struct http_qitem it;
    size_t rounds = 0;
    while (http_qlist_next(&rest, &it)) {
        if (it.name.n == 0 || it.name.p < s || it.name.p + it.name.n > s + n)
            abort();
        if (it.q < -1 || it.q > 1000 || ++rounds > n)
            abort();
        if (rest.p < s || rest.p + rest.n != s + n)
            abort();
    }
}

static void check_choice(const char *s, size_t n, unsigned avail)
{
    int q[HTTP_ENC_N];
    http_accept_encoding(s, n, q);
    int best = 0;
    for (int c = 0; c < HTTP_ENC_N; c++) {
        if (q[c] < 0 || q[c] > 1000)
            abort();
        if ((c == HTTP_ENC_IDENTITY || (avail & (1u << c))) && q[c] > best)
            best = q[c];
    }
    int got = http_encoding_choose(q, avail);
    if (got == -406 ? best != 0 : got < 0 || got >= HTTP_ENC_N || q[got] != best)
        abort();
    if (got > 0 && !(avail & (1u << got)))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    check_list(s, n);
    check_choice(s, n, data[0] & 0x0e);
    int j = http_accept_json(s, n);
    if (j != 0 && j != 1)
        abort();
    return 0;
}

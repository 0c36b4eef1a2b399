/* fuzz_framing.c - the line and frame splitters against themselves: the
 * messages emitted when the input arrives in arbitrary pieces must equal
 * those emitted when it arrives whole, and the error (if any) the same.
 * The first input byte chooses the piece sizes and the limit. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/framing.h"

struct log {
    unsigned char *buf;
    size_t len, cap;
};

static int record(void *arg, const char *msg, size_t len)
{
    struct log *g = arg;
    size_t need = g->len + len + sizeof len;
    if (need > g->cap) {
        g->cap = need * 2;
        g->buf = realloc(g->buf, g->cap);
        if (!g->buf)
            abort();
    }
    memcpy(g->buf + g->len, &len, sizeof len);
    memcpy(g->buf + g->len + sizeof len, msg, len);
    g->len = need;
    return 0;
}

static int run(int frames, const uint8_t *p, size_t n, size_t step, size_t max, struct log *g)
{
    struct iop_lines l = {0};
    struct iop_frames f = {0};
    int rc = 0;
    for (size_t off = 0; off < n && rc == 0; off += step) {
        size_t k = n - off < step ? n - off : step;
        rc = frames ? iop_frames_feed(&f, (const char *)p + off, k, max, record, g, NULL)
                    : iop_lines_feed(&l, (const char *)p + off, k, max, record, g);
    }
    iop_lines_free(&l);
    iop_frames_free(&f);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = (data[0] & 15) + 1, max = (size_t)(data[0] >> 4) * 8 + 1;
    for (int frames = 0; frames < 2; frames++) {
        struct log whole = {0}, parts = {0};
        int a = run(frames, data + 1, size - 1, size, max, &whole);
        int b = run(frames, data + 1, size - 1, step, max, &parts);
        /* An error stops a feed early: compare up to what both saw. */
        if (a != b || whole.len != parts.len ||
            (whole.len && memcmp(whole.buf, parts.buf, whole.len)))
            abort();
        free(whole.buf);
        free(parts.buf);
    }
    return 0;
}

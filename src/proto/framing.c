/* framing.c - see framing.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "proto/framing.h"

static int keep(char **buf, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (*len + n > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n)
            c *= 2;
        char *b = realloc(*buf, c);
        if (!b)
            return -ENOMEM;
        *buf = b;
        *cap = c;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    return 0;
}

int iop_lines_feed(struct iop_lines *st, const char *p, size_t n, size_t max, iop_emit_fn emit,
                   void *arg)
{
    while (n) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) + 1 : n;
        /* The limit counts the line without its '\n'; a partial line past
         * it fails at once, so the buffer never grows beyond max. */
        if (st->len + take - (nl ? 1 : 0) > max)
            return -EMSGSIZE;
        if (!nl)
            return keep(&st->buf, &st->len, &st->cap, p, n);
        int rc;
        if (st->len) {
            if ((rc = keep(&st->buf, &st->len, &st->cap, p, take)) < 0)
                return rc;
            rc = emit(arg, st->buf, st->len);
            st->len = 0;
        } else {
            rc = emit(arg, p, take); /* whole in the input: no copy */
        }
        if (rc)
            return rc;
        p += take;
        n -= take;
    }
    return 0;
}

void iop_lines_free(struct iop_lines *st)
{
    free(st->buf);
    st->buf = NULL;
    st->len = st->cap = 0;
}

static uint32_t be32(const unsigned char *h)
{
    return (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
}

int iop_frames_feed(struct iop_frames *st, const char *p, size_t n, size_t max, iop_emit_fn emit,
                    void *arg, uint32_t *declared)
{
    while (n || (st->hdrlen == 4 && st->len == st->need)) {
        if (st->hdrlen < 4) {
            size_t h = 4 - st->hdrlen < n ? 4 - st->hdrlen : n;
            memcpy(st->hdr + st->hdrlen, p, h);
            st->hdrlen += (unsigned)h;
            p += h;
            n -= h;
            if (st->hdrlen < 4)
                return 0;
            st->need = be32(st->hdr);
            st->len = 0;
            if (declared)
                *declared = st->need;
            if (st->need > max)
                return -EMSGSIZE;
        }
        int rc;
        if (!st->len && n >= st->need) {
            rc = emit(arg, p, st->need); /* whole in the input: no copy */
            p += st->need;
            n -= st->need;
        } else {
            size_t t = st->need - st->len < n ? st->need - st->len : n;
            /* buf exists only while len > 0: a header that ends the input
             * must not leave one behind for a frame of another size. */
            if (t == 0)
                return 0;
            if (!st->buf && !(st->buf = malloc(st->need)))
                return -ENOMEM;
            memcpy(st->buf + st->len, p, t);
            st->len += t;
            p += t;
            n -= t;
            if (st->len < st->need)
                return 0;
            rc = emit(arg, st->buf, st->need);
            free(st->buf);
            st->buf = NULL;
        }
        st->hdrlen = 0;
        st->len = 0;
        if (rc)
            return rc;
    }
    return 0;
}

void iop_frames_free(struct iop_frames *st)
{
    free(st->buf);
    memset(st, 0, sizeof *st);
}

/* fuzz_addr.c - the address parser on raw bytes, and its round trip.
 *
 * Input: any bytes, parsed with iop_addr_parse_len(IOP_ADDR_NUMERIC) (no
 * lookups, never reads past size).  A failure must leave the address
 * zeroed.  A success must format into IOP_ADDR_STRLEN, and the text must
 * parse back to the same address and format to the same text. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ioplex/net.h"

static void same_addr(const iop_addr *a, const iop_addr *b)
{
    /* The parser zeroes the whole struct first: padding compares too. */
    if (a->kind != b->kind || a->len != b->len || a->dual != b->dual ||
        memcmp(&a->u, &b->u, sizeof a->u) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    iop_addr a, b, zero;
    memset(&zero, 0, sizeof zero);
    if (iop_addr_parse_len((const char *)data, size, IOP_ADDR_NUMERIC, &a) < 0) {
        if (memcmp(&a, &zero, sizeof a) != 0)
            abort();
        return 0;
    }
    char text[IOP_ADDR_STRLEN], again[IOP_ADDR_STRLEN];
    int n = iop_addr_format(&a, text, sizeof text);
    if (n <= 0 || (size_t)n >= sizeof text || strlen(text) != (size_t)n)
        abort();
    if (iop_addr_parse_len(text, (size_t)n, IOP_ADDR_NUMERIC, &b) < 0)
        abort();
    same_addr(&a, &b);
    if (iop_addr_format(&b, again, sizeof again) != n || strcmp(text, again) != 0)
        abort();
    /* One byte short: refused, and nothing but "" written. */
    if (iop_addr_format(&a, again, (size_t)n) != -ENOSPC || again[0] != '\0')
        abort();
    return 0;
}

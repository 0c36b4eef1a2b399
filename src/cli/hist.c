/* hist.c - the load generators' latency histogram (see hist.h). */
#include "cli/hist.h"

#include <string.h>

#define TOP ((UINT64_C(1) << HIST_MAX_BITS) - 1)

void hist_init(struct hist *h)
{
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

unsigned hist_bucket(uint64_t v)
{
    if (v < 2 * HIST_SUB)
        return (unsigned)v;
    if (v > TOP)
        v = TOP;
    /* e = floor(log2 v) >= HIST_SUB_BITS + 1.  Shifting by e - HIST_SUB_BITS
     * leaves the top HIST_SUB_BITS + 1 bits, HIST_SUB .. 2*HIST_SUB-1: the
     * sub-bucket, offset so that each power of two follows the last. */
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = e - HIST_SUB_BITS;
    return shift * HIST_SUB + (unsigned)(v >> shift);
}

void hist_bucket_range(unsigned b, uint64_t *lo, uint64_t *width)
{
    if (b < 2 * HIST_SUB) {
        *lo = b;
        *width = 1;
        return;
    }
    unsigned shift = b / HIST_SUB - 1;
    uint64_t sub = b % HIST_SUB + HIST_SUB;
    *lo = sub << shift;
    *width = UINT64_C(1) << shift;
}

void hist_record(struct hist *h, uint64_t v)
{
    h->counts[hist_bucket(v)]++;
    h->n++;
    h->sum += v;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

void hist_merge(struct hist *into, const struct hist *from)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        into->counts[i] += from->counts[i];
    into->n += from->n;
    into->sum += from->sum;
    if (from->min < into->min)
        into->min = from->min;
    if (from->max > into->max)
        into->max = from->max;
}

/* The middle of bucket b, kept inside what was really recorded: the
 * extremes' buckets then report no less than min and no more than max. */
static uint64_t middle(const struct hist *h, unsigned b)
{
    uint64_t lo, width;
    hist_bucket_range(b, &lo, &width);
    uint64_t v = lo + (width - 1) / 2;
    if (v < h->min)
        v = h->min;
    if (v > h->max)
        v = h->max;
    return v;
}

uint64_t hist_percentile(const struct hist *h, double q)
{
    if (!h->n)
        return 0;
    if (q >= 100)
        return h->max;
    /* ceil by hand: the program is not linked with libm */
    double r = q / 100 * (double)h->n;
    uint64_t rank = r < 1 ? 1 : (uint64_t)r;
    if ((double)rank < r)
        rank++;
    uint64_t seen = 0;
    for (unsigned b = 0; b < HIST_BUCKETS; b++) {
        seen += h->counts[b];
        if (seen >= rank)
            return middle(h, b);
    }
    return h->max;
}

double hist_mean(const struct hist *h)
{
    return h->n ? (double)h->sum / (double)h->n : 0;
}

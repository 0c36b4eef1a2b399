/* hist.h - a latency histogram of fixed size for the load generators.
 *
 * The layout is HdrHistogram's log-linear one: values below 2 * HIST_SUB are
 * counted exactly, and every power of two above is split into HIST_SUB
 * equal sub-buckets, so a bucket is never wider than 1/HIST_SUB of the values
 * it holds.  A percentile is reported as the middle of its bucket, which is
 * within 1/(2 * HIST_SUB) = 0.4 % of the true value: better than the 1 % a
 * benchmark needs, in 31 KiB whatever the number of samples.
 *
 * Values are nanoseconds as a rule; the range is 0 .. 2^HIST_MAX_BITS - 1
 * (137 s).  Larger values are counted in the top bucket (and still make the
 * exact max).  Not thread-safe: one histogram per thread, merged at the end.
 */
#ifndef IOP_CLI_HIST_H
#define IOP_CLI_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 7
#define HIST_SUB      (1u << HIST_SUB_BITS)
#define HIST_MAX_BITS 37
/* Exact buckets for 0 .. 2*HIST_SUB-1, then HIST_SUB per power of two. */
#define HIST_BUCKETS ((HIST_MAX_BITS - HIST_SUB_BITS + 1) * HIST_SUB)

struct hist {
    uint64_t n;   /* samples */
    uint64_t sum; /* of the samples, for the mean */
    uint64_t min, max;
    uint64_t counts[HIST_BUCKETS];
};

void hist_init(struct hist *h);
void hist_record(struct hist *h, uint64_t v);
/* Add every sample of from to into. */
void hist_merge(struct hist *into, const struct hist *from);
/* The value at percentile q (0..100) by nearest rank: the smallest recorded
 * value v such that at least q % of the samples are <= v, to within 0.4 %.
 * 100 gives the exact max, an empty histogram 0. */
uint64_t hist_percentile(const struct hist *h, double q);
double hist_mean(const struct hist *h);

/* The bucket of v, and the range of values [lo, lo + width) a bucket holds
 * (for tests and for anyone plotting the distribution). */
unsigned hist_bucket(uint64_t v);
void hist_bucket_range(unsigned b, uint64_t *lo, uint64_t *width);

#endif

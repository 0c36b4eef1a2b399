/* test_hist.c - the load generators' latency histogram (src/cli/hist.c):
 * percentiles of known inputs against the exact ones (nearest rank) within
 * 1 %, exact small values, max and min, merging, the range's ends.  The
 * backend variant does not matter here; the runner's default is used. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli/hist.h"
#include "runner.h"

static const double QS[] = {0, 0.1, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The exact nearest-rank percentile of sorted v[0..n). */
static uint64_t exact(const uint64_t *v, size_t n, double q)
{
    double r = q / 100 * (double)n;
    size_t rank = r < 1 ? 1 : (size_t)r;
    if ((double)rank < r)
        rank++;
    return v[rank - 1];
}

/* Every percentile of QS within 1 % of the exact one (and exact below
 * 2 * HIST_SUB, where buckets are one value wide). */
static void check_against_exact(const struct hist *h, uint64_t *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_u64);
    CHECK_EQ(h->n, n);
    CHECK_EQ(h->min, v[0]);
    CHECK_EQ(h->max, v[n - 1]);
    for (size_t i = 0; i < sizeof QS / sizeof QS[0]; i++) {
        uint64_t want = exact(v, n, QS[i]), got = hist_percentile(h, QS[i]);
        double err = want ? ((double)got - (double)want) / (double)want : (double)got;
        if (err < 0)
            err = -err;
        if (err > 0.01 || (want < 2 * HIST_SUB && got != want))
            iop_test_fail(__FILE__, __LINE__, "p%g: got %llu, want %llu (error %.4f)", QS[i],
                          (unsigned long long)got, (unsigned long long)want, err);
    }
}

static uint64_t rng = 88172645463325252ull;

static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* A log-uniform value from 1 ns to about 100 s: every bucket size is hit. */
static uint64_t log_uniform(void)
{
    unsigned bits = (unsigned)(next_rand() % 37);
    uint64_t base = UINT64_C(1) << bits;
    return base + next_rand() % base;
}

IOP_TEST(hist_empty, be)
{
    (void)be;
    struct hist h;
    hist_init(&h);
    CHECK_EQ(h.n, 0);
    CHECK_EQ(hist_percentile(&h, 50), 0);
    CHECK_EQ(hist_percentile(&h, 100), 0);
    CHECK(hist_mean(&h) == 0);
}

IOP_TEST(hist_small_values_exact, be)
{
    (void)be;
    struct hist h;
    hist_init(&h);
    uint64_t v[2 * HIST_SUB];
    for (unsigned i = 0; i < 2 * HIST_SUB; i++) {
        v[i] = 2 * HIST_SUB - 1 - i;
        hist_record(&h, v[i]);
    }
    check_against_exact(&h, v, 2 * HIST_SUB);
    CHECK_EQ(hist_percentile(&h, 50), HIST_SUB - 1);
    CHECK(hist_mean(&h) == (2 * HIST_SUB - 1) / 2.0);
}

/* 1..1,000,000 ns, one each: pN is N * 10,000 exactly. */
IOP_TEST(hist_uniform, be)
{
    (void)be;
    size_t n = 1000000;
    struct hist h;
    hist_init(&h);
    uint64_t *v = malloc(n * sizeof *v);
    CHECK(v);
    for (size_t i = 0; i < n; i++) {
        v[i] = n - i;
        hist_record(&h, v[i]);
    }
    check_against_exact(&h, v, n);
    CHECK_EQ(hist_percentile(&h, 100), 1000000);
    CHECK_EQ(hist_percentile(&h, 0), 1);
    free(v);
}

IOP_TEST(hist_log_uniform, be)
{
    (void)be;
    size_t n = 200000;
    struct hist h;
    hist_init(&h);
    uint64_t *v = malloc(n * sizeof *v);
    CHECK(v);
    for (size_t i = 0; i < n; i++) {
        v[i] = log_uniform();
        hist_record(&h, v[i]);
    }
    check_against_exact(&h, v, n);
    free(v);
}

/* A bimodal latency profile (most fast, a slow tail): the tail's
 * percentiles land in sparse buckets far from the bulk. */
IOP_TEST(hist_tail, be)
{
    (void)be;
    size_t n = 100000;
    struct hist h;
    hist_init(&h);
    uint64_t *v = malloc(n * sizeof *v);
    CHECK(v);
    for (size_t i = 0; i < n; i++) {
        v[i] = i % 1000 == 7 ? 250000000 + next_rand() % 1000000 : 40000 + next_rand() % 5000;
        hist_record(&h, v[i]);
    }
    check_against_exact(&h, v, n);
    CHECK(hist_percentile(&h, 99.9) >= 250000000 * 0.99);
    CHECK(hist_percentile(&h, 99) < 46000);
    free(v);
}

/* Each bucket's range holds exactly the values that map to it, ranges
 * follow each other without gaps, and no bucket is wider than 1/HIST_SUB of
 * its smallest value. */
IOP_TEST(hist_buckets_tile, be)
{
    (void)be;
    uint64_t next = 0;
    for (unsigned b = 0; b < HIST_BUCKETS; b++) {
        uint64_t lo, width;
        hist_bucket_range(b, &lo, &width);
        CHECK_EQ(lo, next);
        CHECK_EQ(hist_bucket(lo), b);
        CHECK_EQ(hist_bucket(lo + width - 1), b);
        CHECK(width == 1 || width * HIST_SUB <= lo);
        next = lo + width;
    }
    CHECK_EQ(next, UINT64_C(1) << HIST_MAX_BITS);
}

/* Past the range: counted in the top bucket, the max stays exact. */
IOP_TEST(hist_over_range, be)
{
    (void)be;
    struct hist h;
    hist_init(&h);
    uint64_t big = UINT64_C(1) << 45;
    hist_record(&h, 5);
    hist_record(&h, big);
    CHECK_EQ(hist_bucket(big), HIST_BUCKETS - 1);
    CHECK_EQ(h.max, big);
    CHECK_EQ(hist_percentile(&h, 100), big);
    CHECK_EQ(hist_percentile(&h, 50), 5);
    CHECK(hist_percentile(&h, 99) >= (UINT64_C(1) << HIST_MAX_BITS) / 2);
}

/* Merging per-thread histograms gives the histogram of all the samples. */
IOP_TEST(hist_merge, be)
{
    (void)be;
    enum { PARTS = 4, N = 50000 };
    struct hist *parts = malloc(PARTS * sizeof *parts);
    struct hist *all = malloc(sizeof *all), *merged = malloc(sizeof *merged);
    uint64_t *v = malloc(PARTS * N * sizeof *v);
    CHECK(parts && all && merged && v);
    hist_init(all);
    hist_init(merged);
    for (int p = 0; p < PARTS; p++) {
        hist_init(&parts[p]);
        for (int i = 0; i < N; i++) {
            /* each part its own range, so the merge must interleave them */
            uint64_t x = (uint64_t)(p + 1) * 100000 + next_rand() % (1000000u << p);
            v[p * N + i] = x;
            hist_record(&parts[p], x);
            hist_record(all, x);
        }
    }
    for (int p = 0; p < PARTS; p++)
        hist_merge(merged, &parts[p]);
    CHECK(memcmp(all, merged, sizeof *all) == 0);
    check_against_exact(merged, v, PARTS * N);
    /* merging an empty one changes nothing, min included */
    hist_init(&parts[0]);
    hist_merge(merged, &parts[0]);
    CHECK(memcmp(all, merged, sizeof *all) == 0);
    free(parts);
    free(all);
    free(merged);
    free(v);
}

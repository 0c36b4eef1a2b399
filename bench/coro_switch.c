/* coro_switch.c - the cost of a coroutine switch pair (resume + yield), ours
 * against swapcontext, in the same run.
 *
 *   coro_switch [-n PAIRS] [-s SWAPCONTEXT_PAIRS] [-r RUNS]
 *
 * Each run times PAIRS round trips main -> coroutine -> main; the median and
 * range of RUNS runs are printed.  swapcontext gets fewer pairs (it makes a
 * signal-mask system call on every switch, two per pair) so that both take
 * comparable wall time. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "ioplex/coro.h"

#define MAX_RUNS 31

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---- ours ------------------------------------------------------------------ */

static void *spin_yield(iop_coro *co, void *arg)
{
    (void)co;
    (void)arg;
    for (;;)
        iop_coro_yield(NULL, NULL);
    return NULL;
}

static double run_ours(long pairs)
{
    iop_coro *co;
    if (iop_coro_new(spin_yield, NULL, 0, &co) < 0) {
        fprintf(stderr, "iop_coro_new failed\n");
        exit(1);
    }
    iop_coro_resume(co, NULL, NULL); /* warm: the stack's first pages */
    double t0 = now_ns();
    for (long i = 0; i < pairs; i++)
        iop_coro_resume(co, NULL, NULL);
    double t1 = now_ns();
    iop_coro_free(co);
    return (t1 - t0) / (double)pairs;
}

/* ---- swapcontext ------------------------------------------------------------ */

static ucontext_t uc_main, uc_co;

static void uc_body(void)
{
    for (;;)
        swapcontext(&uc_co, &uc_main);
}

static double run_swapcontext(long pairs)
{
    static char stack[64 * 1024] __attribute__((aligned(16)));
    getcontext(&uc_co);
    uc_co.uc_stack.ss_sp = stack;
    uc_co.uc_stack.ss_size = sizeof stack;
    uc_co.uc_link = NULL;
    makecontext(&uc_co, uc_body, 0);
    swapcontext(&uc_main, &uc_co);
    double t0 = now_ns();
    for (long i = 0; i < pairs; i++)
        swapcontext(&uc_main, &uc_co);
    double t1 = now_ns();
    return (t1 - t0) / (double)pairs;
}

static void report(const char *name, double *ns, int runs, long pairs)
{
    qsort(ns, (size_t)runs, sizeof *ns, cmp_double);
    printf("%-12s %9.1f ns/pair  (median of %d runs of %ld pairs; range %.1f-%.1f)\n", name,
           ns[runs / 2], runs, pairs, ns[0], ns[runs - 1]);
}

int main(int argc, char **argv)
{
    long pairs = 10000000, uc_pairs = 500000;
    int runs = 5, opt;
    while ((opt = getopt(argc, argv, "n:s:r:")) != -1) {
        switch (opt) {
        case 'n':
            pairs = atol(optarg);
            break;
        case 's':
            uc_pairs = atol(optarg);
            break;
        case 'r':
            runs = atoi(optarg);
            break;
        default:
            fprintf(stderr, "usage: %s [-n PAIRS] [-s SWAPCONTEXT_PAIRS] [-r RUNS]\n", argv[0]);
            return 2;
        }
    }
    if (pairs <= 0 || uc_pairs <= 0 || runs <= 0 || runs > MAX_RUNS) {
        fprintf(stderr, "coro_switch: -n and -s must be > 0, -r 1..%d\n", MAX_RUNS);
        return 2;
    }
    double ours[MAX_RUNS], uc[MAX_RUNS];
    /* Interleaved, so that a noisy moment hits both alike. */
    for (int r = 0; r < runs; r++) {
        ours[r] = run_ours(pairs);
        uc[r] = run_swapcontext(uc_pairs);
    }
    report("ioplex", ours, runs, pairs);
    report("swapcontext", uc, runs, uc_pairs);
    printf("ratio        %9.1f x\n", uc[runs / 2] / ours[runs / 2]);
    return 0;
}

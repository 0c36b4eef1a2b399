/* test_coro.c - the coroutine core: switches, stacks, the pool. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ioplex/coro.h"
#include "runner.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(TEST_ASAN)
#define TEST_ASAN 1
#endif
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TEST_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__) && !defined(TEST_TSAN)
#define TEST_TSAN 1
#endif

#ifdef TEST_TSAN
/* As for ASan below. */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    return "handle_segv=0";
}
#endif

#ifdef TEST_ASAN
/* ASan would catch the guard-page fault itself and exit(1) with a
 * "stack-overflow" report; guard_page_segv wants to see the plain SIGSEGV
 * that a program without ASan dies of.  No other test here faults. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "handle_segv=0";
}
#endif

/* ---- values through resume / yield ------------------------------------- */

/* Yields in + 1 until it is handed NULL, then returns 1000. */
static void *echo_plus_one(iop_coro *co, void *arg)
{
    CHECK(iop_coro_current() == co);
    CHECK_EQ(iop_coro_status(co), IOP_CORO_RUNNING);
    uintptr_t v = (uintptr_t)arg;
    for (;;) {
        void *in;
        CHECK_OK(iop_coro_yield((void *)(v + 1), &in));
        if (!in)
            return (void *)1000;
        v = (uintptr_t)in;
    }
}

IOP_TEST(values, be)
{
    (void)be;
    iop_coro *co;
    void *out;
    CHECK_OK(iop_coro_new(echo_plus_one, (void *)41, 0, &co));
    CHECK(iop_coro_arg(co) == (void *)41);
    CHECK_EQ(iop_coro_status(co), IOP_CORO_SUSPENDED);
    CHECK(iop_coro_current() == NULL);
    CHECK_EQ(iop_coro_resume(co, (void *)7, &out), 0); /* first in ignored */
    CHECK_EQ((uintptr_t)out, 42);
    for (uintptr_t i = 1; i < 100; i++) {
        CHECK_EQ(iop_coro_resume(co, (void *)(i * 3), &out), 0);
        CHECK_EQ((uintptr_t)out, i * 3 + 1);
        CHECK_EQ(iop_coro_status(co), IOP_CORO_SUSPENDED);
    }
    CHECK_EQ(iop_coro_resume(co, NULL, &out), 1);
    CHECK_EQ((uintptr_t)out, 1000);
    CHECK_EQ(iop_coro_status(co), IOP_CORO_DONE);
    CHECK_EQ(iop_coro_resume(co, NULL, &out), -EINVAL);
    CHECK(iop_coro_current() == NULL);
    CHECK_OK(iop_coro_free(co));
    CHECK_OK(iop_coro_free(NULL));
}

IOP_TEST(errors, be)
{
    (void)be;
    iop_coro *co;
    CHECK_EQ(iop_coro_yield(NULL, NULL), -EPERM);
    CHECK_EQ(iop_coro_new(NULL, NULL, 0, &co), -EINVAL);
    CHECK_EQ(iop_coro_new(echo_plus_one, NULL, SIZE_MAX, &co), -EINVAL);
}

/* ---- callee-saved registers survive ------------------------------------- */

/* Integer and floating-point work whose intermediate values live in
 * registers across yields (volatile would force them to memory: avoided). */
static void *mixed_work(iop_coro *co, void *arg)
{
    (void)co;
    long n = (long)(intptr_t)arg;
    unsigned long a = 1, b = 0, c = 7;
    double x = 1.0, y = 0.5, z = 0.0;
    for (long i = 0; i < n; i++) {
        a = a * 3 + (unsigned long)i;
        b ^= a;
        c += b % 13;
        x = x * 1.0001 + y;
        y = y * 0.999;
        z += x / (double)(i + 1);
        CHECK_OK(iop_coro_yield(NULL, NULL));
    }
    static double result[2];
    result[0] = (double)(a + b + c);
    result[1] = x + y + z;
    return result;
}

static void mixed_reference(long n, double res[2])
{
    unsigned long a = 1, b = 0, c = 7;
    double x = 1.0, y = 0.5, z = 0.0;
    for (long i = 0; i < n; i++) {
        a = a * 3 + (unsigned long)i;
        b ^= a;
        c += b % 13;
        x = x * 1.0001 + y;
        y = y * 0.999;
        z += x / (double)(i + 1);
    }
    res[0] = (double)(a + b + c);
    res[1] = x + y + z;
}

IOP_TEST(registers_survive, be)
{
    (void)be;
    enum { N = 3, STEPS = 500 };
    iop_coro *co[N];
    for (int i = 0; i < N; i++)
        CHECK_OK(iop_coro_new(mixed_work, (void *)(intptr_t)(STEPS + i), 0, &co[i]));
    /* The resumer keeps its own register-held values across the switches. */
    long mine = 5, updates = 0;
    double fmine = 2.5;
    int done = 0;
    void *out[N] = {0};
    for (int step = 0; done < N; step++) {
        for (int i = 0; i < N; i++) {
            if (iop_coro_status(co[i]) == IOP_CORO_DONE)
                continue;
            int rc = iop_coro_resume(co[i], NULL, &out[i]);
            CHECK(rc >= 0);
            if (rc == 1) {
                CHECK_EQ(step, STEPS + i);
                double want[2];
                mixed_reference(STEPS + i, want);
                const double *got = out[i];
                CHECK(got[0] == want[0]);
                CHECK(got[1] == want[1]);
                done++;
            }
            mine = mine * 7 % 1000003;
            fmine = fmine * 0.75 + 1.0;
            updates++;
        }
    }
    long m = 5;
    double f = 2.5;
    for (long k = 0; k < updates; k++) {
        m = m * 7 % 1000003;
        f = f * 0.75 + 1.0;
    }
    CHECK_EQ(mine, m);
    CHECK(fmine == f);
    for (int i = 0; i < N; i++)
        CHECK_OK(iop_coro_free(co[i]));
}

#if defined(__x86_64__)
/* The floating-point control state (rounding mode) belongs to each context:
 * the switch saves MXCSR and the x87 control word. */
static unsigned get_mxcsr(void)
{
    unsigned v;
    __asm__ volatile("stmxcsr %0" : "=m"(v));
    return v;
}

static void set_mxcsr(unsigned v)
{
    __asm__ volatile("ldmxcsr %0" : : "m"(v));
}

static void *round_up_body(iop_coro *co, void *arg)
{
    (void)co;
    (void)arg;
    set_mxcsr((get_mxcsr() & ~0x6000u) | 0x4000u); /* round up */
    CHECK_OK(iop_coro_yield(NULL, NULL));
    CHECK_EQ(get_mxcsr() & 0x6000u, 0x4000u);
    return NULL;
}

IOP_TEST(fp_control_per_context, be)
{
    (void)be;
    iop_coro *co;
    unsigned before = get_mxcsr();
    CHECK_OK(iop_coro_new(round_up_body, NULL, 0, &co));
    CHECK_EQ(iop_coro_resume(co, NULL, NULL), 0);
    CHECK_EQ(get_mxcsr(), before);
    CHECK_EQ(iop_coro_resume(co, NULL, NULL), 1);
    CHECK_EQ(get_mxcsr(), before);
    CHECK_OK(iop_coro_free(co));
}
#endif

/* A coroutine resuming another; yield returns to the resumer. */
static void *nested_inner(iop_coro *co, void *arg)
{
    (void)co;
    CHECK_OK(iop_coro_yield(arg, NULL));
    return (void *)((uintptr_t)arg * 2);
}

static void *nested_outer(iop_coro *co, void *arg)
{
    (void)co;
    (void)arg;
    iop_coro *inner;
    void *out;
    CHECK_OK(iop_coro_new(nested_inner, (void *)21, 0, &inner));
    CHECK_EQ(iop_coro_resume(inner, NULL, &out), 0);
    CHECK_EQ((uintptr_t)out, 21);
    CHECK(iop_coro_current() == co);
    CHECK_EQ(iop_coro_resume(co, NULL, NULL), -EBUSY); /* itself */
    CHECK_OK(iop_coro_yield((void *)1, NULL));         /* to main, not inner */
    CHECK_EQ(iop_coro_resume(inner, NULL, &out), 1);
    CHECK_EQ((uintptr_t)out, 42);
    CHECK_OK(iop_coro_free(inner));
    return (void *)2;
}

IOP_TEST(nested, be)
{
    (void)be;
    iop_coro *co;
    void *out;
    CHECK_OK(iop_coro_new(nested_outer, NULL, 0, &co));
    CHECK_EQ(iop_coro_resume(co, NULL, &out), 0);
    CHECK_EQ((uintptr_t)out, 1);
    CHECK(iop_coro_current() == NULL);
    CHECK_EQ(iop_coro_resume(co, NULL, &out), 1);
    CHECK_EQ((uintptr_t)out, 2);
    CHECK_OK(iop_coro_free(co));
}

/* ---- 1000 coroutines round-robin ----------------------------------------- */

enum { RR_N = 1000, RR_ROUNDS = 50 };
static int rr_order[RR_N * RR_ROUNDS];
static int rr_pos;
static long rr_count[RR_N];

static void *rr_body(iop_coro *co, void *arg)
{
    (void)co;
    int id = (int)(intptr_t)arg;
    for (int r = 0; r < RR_ROUNDS; r++) {
        rr_order[rr_pos++] = id;
        rr_count[id]++;
        void *in;
        CHECK_OK(iop_coro_yield((void *)(intptr_t)(id + r), &in));
        CHECK_EQ((intptr_t)in, -id);
    }
    return NULL;
}

IOP_TEST(round_robin_1000, be)
{
    (void)be;
    static iop_coro *co[RR_N];
    for (int i = 0; i < RR_N; i++)
        CHECK_OK(iop_coro_new(rr_body, (void *)(intptr_t)i, 0, &co[i]));
    size_t live;
    iop_coro_stats(&live, NULL);
    CHECK_EQ(live, RR_N);
    for (int r = 0; r < RR_ROUNDS; r++) {
        for (int i = 0; i < RR_N; i++) {
            void *out;
            CHECK_EQ(iop_coro_resume(co[i], (void *)(intptr_t)-i, &out), 0);
            CHECK_EQ((intptr_t)out, i + r);
        }
    }
    for (int i = 0; i < RR_N; i++) {
        CHECK_EQ(iop_coro_resume(co[i], (void *)(intptr_t)-i, NULL), 1);
        CHECK_EQ(rr_count[i], RR_ROUNDS);
        CHECK_OK(iop_coro_free(co[i]));
    }
    CHECK_EQ(rr_pos, RR_N * RR_ROUNDS);
    for (int k = 0; k < RR_N * RR_ROUNDS; k++)
        CHECK_EQ(rr_order[k], k % RR_N);
}

/* ---- the stack: deep recursion, guard page ------------------------------- */

/* About 1 KiB of frame per level; the sum keeps the buffers live. */
__attribute__((noinline)) static long recurse(int depth, volatile char *prev)
{
    volatile char buf[1000];
    buf[0] = (char)depth;
    buf[999] = prev ? prev[0] : 0;
    if (depth == 0)
        return buf[0] + buf[999];
    return recurse(depth - 1, buf) + buf[999] + 1;
}

static void *deep_body(iop_coro *co, void *arg)
{
    (void)co;
    int depth = (int)(intptr_t)arg;
    long r = recurse(depth, NULL);
    CHECK_OK(iop_coro_yield((void *)(intptr_t)r, NULL));
    return (void *)(intptr_t)recurse(depth, NULL);
}

IOP_TEST(deep_recursion, be)
{
    (void)be;
    iop_coro *co;
    void *out1, *out2;
    /* 40 levels of >= 1 KiB: 40 KiB of frames in a 64 KiB stack. */
    CHECK_OK(iop_coro_new(deep_body, (void *)40, 64 * 1024, &co));
    CHECK_EQ(iop_coro_resume(co, NULL, &out1), 0);
    CHECK_EQ(iop_coro_resume(co, NULL, &out2), 1);
    CHECK(out1 == out2);
    CHECK(out1 == (void *)(intptr_t)recurse(40, NULL));
    CHECK_OK(iop_coro_free(co));
}

IOP_TEST(guard_page_segv, be)
{
    (void)be;
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        /* Without a guard page this would write far below the stack. */
        iop_coro *co;
        if (iop_coro_new(deep_body, (void *)1000, 64 * 1024, &co) < 0)
            _exit(3);
        iop_coro_resume(co, NULL, NULL);
        _exit(4); /* not reached */
    }
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFSIGNALED(status));
    CHECK_EQ(WTERMSIG(status), SIGSEGV);
}

/* ---- the pool and memory ---------------------------------------------------- */

static void *yield_once(iop_coro *co, void *arg)
{
    (void)co;
    CHECK_OK(iop_coro_yield(arg, NULL));
    return NULL;
}

IOP_TEST(no_stack_leak, be)
{
    (void)be;
    enum { N = 200 };
    static iop_coro *co[N];
    size_t live0, pooled0, live, pooled;
    iop_coro_stats(&live0, &pooled0);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            CHECK_OK(iop_coro_new(yield_once, NULL, 0, &co[i]));
            CHECK_EQ(iop_coro_resume(co[i], NULL, NULL), 0);
        }
        iop_coro_stats(&live, NULL);
        CHECK_EQ(live, live0 + N);
        /* Half are freed suspended (mid-function), half finished. */
        for (int i = 0; i < N; i++) {
            if (i % 2)
                CHECK_EQ(iop_coro_resume(co[i], NULL, NULL), 1);
            CHECK_OK(iop_coro_free(co[i]));
        }
        iop_coro_stats(&live, &pooled);
        CHECK_EQ(live, live0);
        CHECK_EQ(pooled, IOP_CORO_POOL_MAX);
    }
    /* The pool is reused: a new coroutine takes a pooled stack. */
    CHECK_OK(iop_coro_new(yield_once, NULL, 0, &co[0]));
    iop_coro_stats(NULL, &pooled);
    CHECK_EQ(pooled, IOP_CORO_POOL_MAX - 1);
    CHECK_OK(iop_coro_free(co[0]));
    iop_coro_pool_trim();
    iop_coro_stats(&live, &pooled);
    CHECK_EQ(live, live0);
    CHECK_EQ(pooled, 0);
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    CHECK(f != NULL);
    long size, resident;
    CHECK_EQ(fscanf(f, "%ld %ld", &size, &resident), 2);
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

IOP_TEST(pages_touched_only_as_used, be)
{
    (void)be;
    enum { N = 1000 };
    static iop_coro *co[N];
#ifdef TEST_TSAN
    IOP_SKIP("TSan gives every fiber a state of tens of KiB: RSS says nothing of stacks");
#endif
    iop_coro_pool_trim();
    long before = rss_kib();
    for (int i = 0; i < N; i++) {
        CHECK_OK(iop_coro_new(yield_once, NULL, 0, &co[i]));
        CHECK_EQ(iop_coro_resume(co[i], NULL, NULL), 0); /* started, now idle */
    }
    long delta = rss_kib() - before;
    long stacks = N * (IOP_CORO_STACK_DEFAULT / 1024);
    fprintf(stderr, "rss delta %ld KiB for %d idle coroutines (stacks %ld KiB)\n", delta, N,
            stacks);
    /* One or two pages each (ASan's shadow adds an eighth). */
    CHECK(delta < stacks / 4);
    for (int i = 0; i < N; i++)
        CHECK_OK(iop_coro_free(co[i]));
    iop_coro_pool_trim();
}

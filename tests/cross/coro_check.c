/* coro_check.c - the coroutine switch on a foreign architecture.
 *
 * The unit tests run on the build machine (x86-64).  This program is
 * cross-compiled with src/coro/ alone and run under qemu-user by
 * tests/cross/run.sh, so that the aarch64 switch is exercised too:
 * interleaving coroutines whose callee-saved integer and floating-point
 * registers must survive every switch, values passed both ways, deep
 * recursion within the stack, and a stack overflow that must be a clean
 * SIGSEGV on the guard page.  Exit 0 when all hold. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ioplex/coro.h"

#define NCO    64
#define ROUNDS 500

static int failed;

static void fail(const char *what, long a, long b)
{
    fprintf(stderr, "coro_check: %s: %ld != %ld\n", what, a, b);
    failed = 1;
}

/* Keeps values in callee-saved registers across yields: the compiler must
 * hold acc, k and f somewhere that survives the call into iop_coro_yield. */
static void *worker(iop_coro *co, void *arg)
{
    (void)co;
    long id = (long)(intptr_t)arg, acc = id;
    double f = (double)id * 0.5;
    for (long k = 0; k < ROUNDS; k++) {
        void *in = NULL;
        acc = acc * 31 + k;
        f = f * 1.0000001 + 1.0;
        if (iop_coro_yield((void *)(intptr_t)(acc & 0xffff), &in) < 0)
            fail("yield", -1, 0);
        if ((long)(intptr_t)in != id + k)
            fail("resume value", (long)(intptr_t)in, id + k);
    }
    return (void *)(intptr_t)((long)f + acc);
}

static long expect_result(long id)
{
    long acc = id;
    double f = (double)id * 0.5;
    for (long k = 0; k < ROUNDS; k++) {
        acc = acc * 31 + k;
        f = f * 1.0000001 + 1.0;
    }
    return (long)f + acc;
}

static void interleave(void)
{
    iop_coro *co[NCO];
    for (long i = 0; i < NCO; i++)
        if (iop_coro_new(worker, (void *)(intptr_t)i, 0, &co[i]) < 0)
            fail("new", i, 0);
    long acc[NCO];
    for (long i = 0; i < NCO; i++)
        acc[i] = i;
    for (long k = 0; k <= ROUNDS; k++) {
        for (long i = 0; i < NCO; i++) {
            void *out = NULL;
            int rc = iop_coro_resume(co[i], (void *)(intptr_t)(k ? i + k - 1 : 0), &out);
            if (k < ROUNDS) {
                acc[i] = acc[i] * 31 + k;
                if (rc != 0 || (long)(intptr_t)out != (acc[i] & 0xffff))
                    fail("yielded value", (long)(intptr_t)out, acc[i] & 0xffff);
            } else if (rc != 1 || (long)(intptr_t)out != expect_result(i)) {
                fail("result", (long)(intptr_t)out, expect_result(i));
            }
        }
    }
    for (long i = 0; i < NCO; i++)
        iop_coro_free(co[i]);
}

static long depth(long n, volatile char *prev)
{
    volatile char frame[256];
    frame[0] = (char)n;
    if (prev && prev[0] != (char)(n + 1))
        fail("frame", prev[0], n + 1);
    return n ? depth(n - 1, frame) + frame[0] : 0;
}

static void *deep(iop_coro *co, void *arg)
{
    (void)co;
    long n = (long)(intptr_t)arg;
    return (void *)(intptr_t)depth(n, NULL);
}

static void recursion(void)
{
    iop_coro *co;
    void *out = NULL;
    /* ~150 frames of ~300 bytes: about 45 KiB of a 64 KiB stack. */
    if (iop_coro_new(deep, (void *)(intptr_t)150, 64 * 1024, &co) < 0 ||
        iop_coro_resume(co, NULL, &out) != 1)
        fail("deep recursion", 0, 1);
    else {
        long want = 0;
        for (long k = 1; k <= 150; k++)
            want += (char)k;
        if ((long)(intptr_t)out != want)
            fail("deep result", (long)(intptr_t)out, want);
    }
    iop_coro_free(co);
}

static void *overflow(iop_coro *co, void *arg)
{
    (void)co;
    (void)arg;
    return (void *)(intptr_t)depth(1L << 20, NULL); /* far past any stack */
}

static void guard_page(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        iop_coro *co;
        if (iop_coro_new(overflow, NULL, 64 * 1024, &co) == 0)
            iop_coro_resume(co, NULL, NULL);
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (!WIFSIGNALED(st) || (WTERMSIG(st) != SIGSEGV && WTERMSIG(st) != SIGBUS))
        fail("overflow ends in SIGSEGV", WIFSIGNALED(st) ? WTERMSIG(st) : -1, SIGSEGV);
}

int main(void)
{
    interleave();
    recursion();
    guard_page();
    size_t live = 0;
    iop_coro_stats(&live, NULL);
    if (live != 0)
        fail("live stacks", (long)live, 0);
    if (!failed)
        printf("coro_check: %d coroutines x %d switches, recursion, guard page: ok\n", NCO, ROUNDS);
    return failed;
}

/* runner.h - ioplex's own small unit-test runner.
 *
 * A test is one IOP_TEST(name, be) body.  The runner forks a child per
 * (test, backend variant), kills it after a timeout, checks that it closed
 * every fd it opened, and prints one line per run.  A test skips itself with
 * IOP_SKIP (exit 77, as automake and ctest understand it).
 *
 *   test_loop --backend epoll-edge [--filter SUBSTR] [--list]
 */
#ifndef IOP_TEST_RUNNER_H
#define IOP_TEST_RUNNER_H

#include <stdio.h>
#include <stdlib.h>

#include "ioplex/loop.h"

struct iop_test_backend {
    const char *variant; /* "select", "poll", "epoll", "epoll-edge", "uring", ... */
    int kind;            /* IOP_BACKEND_* */
    unsigned flags;      /* IOP_LOOP_* */
};

typedef void (*iop_test_fn)(const struct iop_test_backend *be);
void iop_test_register(const char *name, iop_test_fn fn);

#define IOP_TEST(name, be)                                                                         \
    static void test_##name(const struct iop_test_backend *be);                                    \
    __attribute__((constructor)) static void register_##name(void)                                 \
    {                                                                                              \
        iop_test_register(#name, test_##name);                                                     \
    }                                                                                              \
    static void test_##name(const struct iop_test_backend *be)

void iop_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            iop_test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                                 \
    } while (0)

#define CHECK_EQ(a, b)                                                                             \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_)                                                                              \
            iop_test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, a_, b_);           \
    } while (0)

/* For calls returning 0 / negative errno. */
#define CHECK_OK(call)                                                                             \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ < 0)                                                                               \
            iop_test_fail(__FILE__, __LINE__, "%s: %s", #call, iop_strerror(rc_));                 \
    } while (0)

#define IOP_SKIP(why)                                                                              \
    do {                                                                                           \
        fprintf(stderr, "skip: %s\n", why);                                                        \
        exit(77);                                                                                  \
    } while (0)

/* A loop on the test's backend; fails the test if it cannot be made. */
iop_loop *iop_test_loop(const struct iop_test_backend *be);
/* iop_loop_free() must succeed: every handle was stopped. */
void iop_test_loop_free(iop_loop *loop);
/* Run the loop (IOP_RUN_ONCE steps) until *flag is non-zero; fail after
 * timeout_ms.  Bounds every wait in the tests. */
void iop_test_run_until(iop_loop *loop, const int *flag, int timeout_ms);
/* Milliseconds of CLOCK_MONOTONIC. */
long long iop_test_now_ms(void);

#endif

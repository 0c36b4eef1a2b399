/* runner.c - see runner.h. */
#include "runner.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_TESTS      256
#define TEST_TIMEOUT_S 60

static struct {
    const char *name;
    iop_test_fn fn;
} tests[MAX_TESTS];
static int ntests;

static const struct iop_test_backend variants[] = {
    {"select", IOP_BACKEND_SELECT, 0}, {"poll", IOP_BACKEND_POLL, 0},
    {"epoll", IOP_BACKEND_EPOLL, 0},   {"epoll-edge", IOP_BACKEND_EPOLL, IOP_LOOP_EDGE},
    {"uring", IOP_BACKEND_URING, 0},   {"uring-edge", IOP_BACKEND_URING, IOP_LOOP_EDGE},
};

void iop_test_register(const char *name, iop_test_fn fn)
{
    if (ntests < MAX_TESTS) {
        tests[ntests].name = name;
        tests[ntests].fn = fn;
        ntests++;
    }
}

void iop_test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    _exit(1);
}

long long iop_test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

iop_loop *iop_test_loop(const struct iop_test_backend *be)
{
    iop_loop *l = NULL;
    int rc = iop_loop_new(be->kind, be->flags, &l);
    if (rc < 0)
        iop_test_fail(__FILE__, __LINE__, "iop_loop_new(%s): %s", be->variant, iop_strerror(rc));
    return l;
}

void iop_test_loop_free(iop_loop *l)
{
    int rc = iop_loop_free(l);
    if (rc < 0)
        iop_test_fail(__FILE__, __LINE__, "iop_loop_free: %s (%zu still active)", iop_strerror(rc),
                      iop_loop_alive(l));
}

static void guard_cb(iop_timer *t)
{
    *(int *)t->data = 1;
}

void iop_test_run_until(iop_loop *l, const int *flag, int timeout_ms)
{
    /* A timer bounds each blocking iteration, so a missing event fails the
     * test instead of hanging it. */
    int expired = 0;
    iop_timer guard;
    iop_timer_init(&guard, guard_cb);
    guard.data = &expired;
    CHECK_OK(iop_timer_start(l, &guard, (uint64_t)timeout_ms, 0));
    while (!*flag && !expired) {
        int rc = iop_loop_run(l, IOP_RUN_ONCE);
        /* Work the events deferred (an on_close that sets the flag) runs at
         * the start of the next run: give it one that does not block. */
        if (rc >= 0 && !*flag)
            rc = iop_loop_run(l, IOP_RUN_NOWAIT);
        if (rc < 0)
            iop_test_fail(__FILE__, __LINE__, "iop_loop_run: %s", iop_strerror(rc));
    }
    iop_timer_stop(&guard);
    if (!*flag)
        iop_test_fail(__FILE__, __LINE__, "timed out after %d ms", timeout_ms);
}

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory stream's own fd */
}

static int run_child(int t, const struct iop_test_backend *be)
{
    alarm(TEST_TIMEOUT_S);
    int before = count_fds();
    tests[t].fn(be);
    int after = count_fds();
    if (before != after) {
        fprintf(stderr, "fd leak: %d open before, %d after\n", before, after);
        return 1;
    }
    return 0;
}

/* 0 pass, 77 skip, else fail. */
static int run_one(int t, const struct iop_test_backend *be)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0)
        exit(run_child(t, be)); /* exit, not _exit: LeakSanitizer runs at exit */
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    fprintf(stderr, "  killed by signal %d%s\n", WTERMSIG(status),
            WTERMSIG(status) == SIGALRM ? " (timeout)" : "");
    return 1;
}

/* Is the backend available here at all (io_uring may be refused)? */
static int backend_available(const struct iop_test_backend *be)
{
    iop_loop *l = NULL;
    int rc = iop_loop_new(be->kind, be->flags, &l);
    if (rc < 0) {
        fprintf(stderr, "backend %s unavailable: %s\n", be->variant, iop_strerror(rc));
        return 0;
    }
    iop_loop_free(l);
    return 1;
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv)
{
    const char *variant = "epoll", *filter = NULL;
    int list = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--backend") && i + 1 < argc)
            variant = argv[++i];
        else if (!strcmp(argv[i], "--filter") && i + 1 < argc)
            filter = argv[++i];
        else if (!strcmp(argv[i], "--list"))
            list = 1;
        else {
            fprintf(stderr, "usage: %s [--backend VARIANT] [--filter SUBSTR] [--list]\n", argv[0]);
            return 2;
        }
    }
    const struct iop_test_backend *be = NULL;
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++)
        if (!strcmp(variants[i].variant, variant))
            be = &variants[i];
    if (!be) {
        fprintf(stderr, "%s: unknown backend variant '%s'\n", argv[0], variant);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    if (!list && !backend_available(be))
        return 77;
    int failed = 0, passed = 0, skipped = 0;
    for (int t = 0; t < ntests; t++) {
        if (filter && !strstr(tests[t].name, filter))
            continue;
        if (list) {
            printf("%s\n", tests[t].name);
            continue;
        }
        long long t0 = iop_test_now_ms();
        int rc = run_one(t, be);
        const char *word = rc == 0 ? "ok" : rc == 77 ? "skip" : "FAIL";
        printf("%-4s %s/%s (%lld ms)\n", word, tests[t].name, be->variant, iop_test_now_ms() - t0);
        fflush(stdout);
        if (rc == 0)
            passed++;
        else if (rc == 77)
            skipped++;
        else
            failed++;
    }
    if (!list)
        printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}

/* test_server_coro.c - the coro model (src/server/coro_model.c): a
 * coroutine per connection on each reactor.  The blocking-style cases shared
 * with iterative, thread and fork are in test_server_blocking.c; these are
 * the coro model's own: many parked coroutines at once, worker threads,
 * stop now with every coroutine parked, max_conns, the stack size, and no
 * stack left behind (iop_coro_stats). */
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "ioplex/coro.h"
#include "server_helpers.h"

static atomic_int active, peak, served;
static atomic_long cancelled;

static void reset(void)
{
    atomic_store(&active, 0);
    atomic_store(&peak, 0);
    atomic_store(&served, 0);
    atomic_store(&cancelled, 0);
}

static void enter(void)
{
    int n = atomic_fetch_add(&active, 1) + 1;
    int p = atomic_load(&peak);
    while (n > p && !atomic_compare_exchange_weak(&peak, &p, n))
        ;
    atomic_fetch_add(&served, 1);
}

static void echo_handle(iop_conn *c)
{
    enter();
    char buf[4096];
    ssize_t n;
    while ((n = iop_conn_recv(c, buf, sizeof buf)) > 0)
        if (iop_conn_sendall(c, buf, (size_t)n) < 0)
            break;
    if (n == -ECANCELED)
        atomic_fetch_add(&cancelled, 1);
    atomic_fetch_sub(&active, 1);
}

static struct iop_server_config config(const struct iop_handler *h)
{
    struct iop_server_config cfg = {0};
    cfg.model = IOP_MODEL_CORO;
    cfg.handler = h;
    return cfg;
}

static size_t live_stacks(void)
{
    size_t live = 0;
    iop_coro_stats(&live, NULL);
    return live;
}

static unsigned char pattern(size_t conn, size_t i)
{
    return (unsigned char)((conn * 31 + i * 7 + i / 251) & 0xff);
}

/* Many connections at once: every coroutine parked in recv together, then
 * each echoes its own bytes back exactly. */
static void many_echo(const struct iop_test_backend *be, size_t n, unsigned workers)
{
    static const struct iop_handler h = {.handle = echo_handle};
    enum { LEN = 3000 };
    reset();
    size_t base = live_stacks();
    struct iop_server_config cfg = config(&h);
    cfg.workers = workers;
    struct fixture f;
    fixture_start(&f, be, cfg, 1);
    int *fds = calloc(n, sizeof *fds);
    unsigned char *buf = malloc(LEN);
    CHECK(fds && buf);
    for (size_t i = 0; i < n; i++)
        fds[i] = client(&f, 0);
    /* Wait until every connection has its coroutine. */
    long long deadline = iop_test_now_ms() + 10000;
    while ((size_t)atomic_load(&active) < n && iop_test_now_ms() < deadline)
        usleep(2000);
    CHECK_EQ((size_t)atomic_load(&active), n);
    CHECK(live_stacks() >= base + n);
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < LEN; k++)
            buf[k] = pattern(i, k);
        put(fds[i], buf, LEN);
    }
    for (size_t i = 0; i < n; i++) {
        size_t got = 0;
        while (got < LEN) {
            ssize_t r = get_some(fds[i], buf + got, LEN - got);
            if (r <= 0)
                iop_test_fail(__FILE__, __LINE__, "conn %zu: %zd after %zu bytes", i, r, got);
            got += (size_t)r;
        }
        for (size_t k = 0; k < LEN; k++)
            if (buf[k] != pattern(i, k))
                iop_test_fail(__FILE__, __LINE__, "conn %zu byte %zu", i, k);
        CHECK(shutdown(fds[i], SHUT_WR) == 0);
    }
    for (size_t i = 0; i < n; i++) {
        expect_eof(fds[i]);
        close(fds[i]);
    }
    CHECK_EQ((size_t)atomic_load(&peak), n);
    fixture_stop(&f);
    CHECK_EQ(atomic_load(&active), 0);
    CHECK_EQ((size_t)atomic_load(&served), n);
    CHECK_EQ(live_stacks(), base);
    free(fds);
    free(buf);
}

IOP_TEST(coro_thousand_concurrent, be)
{
    /* select: client and server fds share this process and FD_SETSIZE. */
    many_echo(be, strcmp(be->variant, "select") ? 1000 : 300, 1);
}

IOP_TEST(coro_workers, be)
{
    many_echo(be, 200, 3);
}

/* Stop now with every coroutine parked: each wait returns -ECANCELED, and
 * no stack is left. */
IOP_TEST(coro_stop_now_all_parked, be)
{
    static const struct iop_handler h = {.handle = echo_handle};
    enum { N = 100 };
    reset();
    size_t base = live_stacks();
    struct iop_server_config cfg = config(&h);
    cfg.workers = 2;
    struct fixture f;
    fixture_start(&f, be, cfg, 1);
    int fds[N];
    for (int i = 0; i < N; i++)
        fds[i] = client(&f, 0);
    for (int i = 0; i < N; i++) {
        puts_(fds[i], "x\n");
        expect_line(fds[i], "x\n");
    }
    fixture_shutdown(&f);
    usleep(50000);
    fixture_shutdown(&f); /* now */
    CHECK(fixture_join(&f) < 2000);
    for (int i = 0; i < N; i++) {
        expect_eof(fds[i]);
        close(fds[i]);
    }
    CHECK_EQ(atomic_load(&cancelled), N);
    CHECK_EQ(atomic_load(&active), 0);
    CHECK_EQ(live_stacks(), base);
}

/* A graceful stop with nothing in flight ends at once; one in flight is
 * let finish. */
IOP_TEST(coro_graceful_waits_for_handler, be)
{
    static const struct iop_handler h = {.handle = echo_handle};
    reset();
    size_t base = live_stacks();
    struct fixture f;
    fixture_start(&f, be, config(&h), 1);
    int fd = client(&f, 0);
    puts_(fd, "a\n");
    expect_line(fd, "a\n");
    fixture_shutdown(&f);
    puts_(fd, "b\n"); /* still served */
    expect_line(fd, "b\n");
    close(fd);
    CHECK(fixture_join(&f) < 2000);
    CHECK_EQ(atomic_load(&cancelled), 0);
    CHECK_EQ(live_stacks(), base);
}

static void hi_handle(iop_conn *c)
{
    enter();
    char line[64];
    ssize_t n;
    if (iop_conn_sendall(c, "hi\n", 3) == 0)
        while ((n = iop_conn_readline(c, line, sizeof line)) > 0) {
            for (ssize_t i = 0; i < n; i++)
                if (line[i] >= 'a' && line[i] <= 'z')
                    line[i] = (char)(line[i] - 'a' + 'A');
            if (iop_conn_sendall(c, line, (size_t)n) < 0)
                break;
        }
    atomic_fetch_sub(&active, 1);
}

IOP_TEST(coro_max_conns, be)
{
    static const struct iop_handler h = {.handle = hi_handle};
    reset();
    struct iop_server_config cfg = config(&h);
    cfg.max_conns = 2;
    struct fixture f;
    fixture_start(&f, be, cfg, 1);
    int a = client(&f, 0), b = client(&f, 0);
    expect_line(a, "hi\n");
    expect_line(b, "hi\n");
    /* The third waits in the backlog: connected, but nobody serves it. */
    int c = client(&f, 0);
    puts_(c, "c\n");
    expect_silence(c, 300);
    CHECK_EQ(atomic_load(&served), 2);
    puts_(a, "a\n");
    expect_line(a, "A\n");
    close(a); /* one finishes: the third is taken */
    expect_line(c, "hi\n");
    expect_line(c, "C\n");
    puts_(b, "b\n");
    expect_line(b, "B\n");
    CHECK_EQ(atomic_load(&peak), 2);
    close(b);
    close(c);
    fixture_stop(&f);
    CHECK_EQ(atomic_load(&served), 3);
}

/* cfg.stack_size: a handler with 200 KiB of locals runs on a 512 KiB
 * stack (it would hit the guard page of the 64 KiB default). */
static void deep_handle(iop_conn *c)
{
    volatile char big[200 * 1024];
    for (size_t i = 0; i < sizeof big; i += 4096)
        big[i] = (char)i;
    char buf[16];
    ssize_t n = iop_conn_recv(c, buf, sizeof buf);
    if (n > 0)
        (void)iop_conn_sendall(c, buf, (size_t)n);
    big[0] = 0;
}

IOP_TEST(coro_stack_size, be)
{
    static const struct iop_handler h = {.handle = deep_handle};
    size_t base = live_stacks();
    struct iop_server_config cfg = config(&h);
    cfg.stack_size = 512 * 1024;
    struct fixture f;
    fixture_start(&f, be, cfg, 1);
    int fd = client(&f, 0);
    puts_(fd, "deep\n");
    expect_line(fd, "deep\n");
    expect_eof(fd);
    close(fd);
    fixture_stop(&f);
    CHECK_EQ(live_stacks(), base);
}

/* workers > 1 is allowed for coro (refused for the blocking models). */
IOP_TEST(coro_config, be)
{
    (void)be;
    static const struct iop_handler h = {.handle = echo_handle};
    static const struct iop_handler none = {0};
    struct iop_server_config cfg = config(&h);
    cfg.workers = 4;
    iop_server *srv;
    CHECK_OK(iop_server_new(&cfg, &srv));
    iop_server_free(srv);
    cfg.handler = &none;
    CHECK_EQ(iop_server_new(&cfg, &srv), -EINVAL);
}

/* A peer that resets while its coroutine is parked in recv: the recv
 * returns the reset, the handler ends, and its stack goes back. */
static atomic_long reset_rc;

static void reset_handle(iop_conn *c)
{
    enter();
    char buf[64];
    ssize_t n = iop_conn_recv(c, buf, sizeof buf);
    if (n > 0 && iop_conn_sendall(c, "ok", 2) == 0)
        n = iop_conn_recv(c, buf, sizeof buf); /* parked here when the RST comes */
    atomic_store(&reset_rc, (long)n);
    atomic_fetch_sub(&active, 1);
}

IOP_TEST(coro_peer_reset_while_parked, be)
{
    static const struct iop_handler h = {.handle = reset_handle};
    reset();
    atomic_store(&reset_rc, 1);
    size_t base = live_stacks();
    struct fixture f;
    fixture_start(&f, be, config(&h), 1);
    int fd = client(&f, 0);
    put(fd, "x", 1);
    char buf[2];
    size_t got = 0;
    while (got < 2) {
        ssize_t r = get_some(fd, buf + got, 2 - got);
        CHECK(r > 0);
        got += (size_t)r;
    }
    usleep(20000); /* let the coroutine park again */
    struct linger lg = {1, 0};
    CHECK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    close(fd); /* RST */
    long long deadline = iop_test_now_ms() + 5000;
    while (atomic_load(&active) > 0 && iop_test_now_ms() < deadline)
        usleep(2000);
    CHECK_EQ(atomic_load(&active), 0);
    CHECK_EQ(atomic_load(&reset_rc), -ECONNRESET);
    fixture_stop(&f);
    CHECK_EQ(live_stacks(), base);
}

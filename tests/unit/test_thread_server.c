/* test_thread_server.c - the thread model under ThreadSanitizer (ctest -L
 * thread): connections served on threads of their own, max_conns, and stop
 * now reaching a handler blocked in its own system call.
 *
 * iop_server_shutdown() is called only once a handler has told the test
 * (through an atomic) that it runs, which orders it after the server has
 * started for TSan too: the bytes of a socket carry no happens-before. */
#include <ctype.h>
#include <stdatomic.h>

#include "server_helpers.h"

static atomic_int served;  /* handlers started */
static atomic_int running; /* handlers running now */
static atomic_int peak;    /* most running at once */

static void enter(void)
{
    atomic_fetch_add(&served, 1);
    int now = atomic_fetch_add(&running, 1) + 1, p = atomic_load(&peak);
    while (now > p && !atomic_compare_exchange_weak(&peak, &p, now))
        ;
}

static void leave(void)
{
    atomic_fetch_sub(&running, 1);
}

/* Greets with "hi", then upper-cases lines until EOF. */
static void hi_handle(iop_conn *c)
{
    enter();
    char line[256];
    ssize_t n;
    if (iop_conn_sendall(c, "hi\n", 3) == 0) {
        while ((n = iop_conn_readline(c, line, sizeof line)) > 0) {
            for (ssize_t i = 0; i < n; i++)
                line[i] = (char)toupper((unsigned char)line[i]);
            if (iop_conn_sendall(c, line, (size_t)n) < 0)
                break;
        }
    }
    leave();
}

static void reset(void)
{
    atomic_store(&served, 0);
    atomic_store(&running, 0);
    atomic_store(&peak, 0);
}

static struct iop_server_config config(const struct iop_handler *h)
{
    struct iop_server_config cfg = {0};
    cfg.model = IOP_MODEL_THREAD;
    cfg.handler = h;
    return cfg;
}

IOP_TEST(thread_concurrent_clients, be)
{
    static const struct iop_handler h = {.handle = hi_handle};
    reset();
    struct fixture f;
    fixture_start(&f, be, config(&h), 1);
    enum { N = 16 };
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = client(&f, 0);
        expect_line(fds[i], "hi\n");
    }
    for (int round = 0; round < 3; round++) {
        for (int i = N - 1; i >= 0; i--) {
            char msg[32], want[32];
            snprintf(msg, sizeof msg, "c%d r%d\n", i, round);
            snprintf(want, sizeof want, "C%d R%d\n", i, round);
            puts_(fds[i], msg);
            expect_line(fds[i], want);
        }
    }
    CHECK_EQ(atomic_load(&peak), N); /* all served at once */
    for (int i = 0; i < N; i++)
        close(fds[i]);
    fixture_stop(&f);
    CHECK_EQ(atomic_load(&running), 0);
}

IOP_TEST(thread_max_conns, be)
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

/* Blocks in its own poll(2) on the socket, not in an iop_conn call: only
 * stop now's shutdown(2) of the socket wakes it. */
static atomic_int own_poll_woke;

static void own_poll_handle(iop_conn *c)
{
    enter();
    if (iop_conn_sendall(c, "hi\n", 3) == 0) {
        struct pollfd p = {iop_conn_fd(c), POLLIN, 0};
        while (poll(&p, 1, -1) < 0 && errno == EINTR)
            ;
        atomic_store(&own_poll_woke, 1);
    }
    leave();
}

IOP_TEST(thread_stop_now_wakes_own_calls, be)
{
    static const struct iop_handler h = {.handle = own_poll_handle};
    reset();
    struct fixture f;
    fixture_start(&f, be, config(&h), 1);
    int fd = client(&f, 0);
    expect_line(fd, "hi\n");
    while (atomic_load(&served) == 0)
        usleep(1000);
    iop_server_shutdown(f.srv);
    usleep(50000);
    CHECK_EQ(atomic_load(&own_poll_woke), 0); /* graceful: left alone */
    iop_server_shutdown(f.srv);
    CHECK(fixture_join(&f) < 2000);
    CHECK_EQ(atomic_load(&own_poll_woke), 1);
    expect_eof(fd);
    close(fd);
}

/* A graceful stop with handlers in flight on several threads. */
static void slow_handle(iop_conn *c)
{
    enter();
    char line[64];
    if (iop_conn_readline(c, line, sizeof line) > 0 && iop_conn_sendall(c, "busy\n", 5) == 0) {
        usleep(200000);
        iop_conn_sendall(c, "done\n", 5);
    }
    leave();
}

IOP_TEST(thread_graceful_stop, be)
{
    static const struct iop_handler h = {.handle = slow_handle};
    reset();
    struct fixture f;
    fixture_start(&f, be, config(&h), 1);
    enum { N = 4 };
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = client(&f, 0);
        puts_(fds[i], "go\n");
    }
    for (int i = 0; i < N; i++)
        expect_line(fds[i], "busy\n");
    while (atomic_load(&served) < N)
        usleep(1000);
    iop_server_shutdown(f.srv);
    for (int i = 0; i < N; i++) {
        expect_line(fds[i], "done\n");
        expect_eof(fds[i]);
        close(fds[i]);
    }
    CHECK(fixture_join(&f) < 2000);
    CHECK_EQ(atomic_load(&running), 0);
}

static atomic_int hammer_on;

static void *hammer(void *arg)
{
    iop_server *srv = arg;
    while (atomic_load(&hammer_on))
        iop_server_shutdown(srv);
    return NULL;
}

static void hi_open(iop_stream *s)
{
    enter();
    iop_stream_write(s, "hi\n", 3);
}

static void drop_data(iop_stream *s, const char *buf, size_t n)
{
    (void)s, (void)buf, (void)n;
}

/* iop_server_shutdown() from another thread, over and over, while the
 * worker finishes: a notification must never touch the worker's wake-up
 * handle as it is being stopped (TSan sees such a race). */
IOP_TEST(thread_shutdown_races_the_end, be)
{
    static const struct iop_handler h = {
        .handle = hi_handle, .on_open = hi_open, .on_data = drop_data};
    static const int all[] = {IOP_MODEL_THREAD, IOP_MODEL_EVENT, IOP_MODEL_ITERATIVE};
    for (int round = 0; round < 6; round++) {
        reset();
        struct iop_server_config cfg = config(&h);
        cfg.model = all[round % 3];
        struct fixture f;
        fixture_start(&f, be, cfg, 1);
        int fd = client(&f, 0);
        expect_line(fd, "hi\n");
        while (atomic_load(&served) < 1)
            usleep(1000);
        atomic_store(&hammer_on, 1);
        pthread_t th;
        CHECK(pthread_create(&th, NULL, hammer, f.srv) == 0);
        close(fd);
        CHECK(pthread_join(f.thread, NULL) == 0);
        atomic_store(&hammer_on, 0);
        CHECK(pthread_join(th, NULL) == 0);
        CHECK_EQ(f.rc, 0);
        iop_server_free(f.srv);
    }
}

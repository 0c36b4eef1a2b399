/* test_server_event.c - the event model: reactors, workers, processes,
 * mixed listeners, max_conns, idle timeouts and graceful stop. */
#include <ctype.h>
#include <stdlib.h>
#include <sys/un.h>

#include "server_helpers.h"

static void up_data(iop_stream *s, const char *buf, size_t n)
{
    char tmp[65536];
    for (size_t i = 0; i < n; i++)
        tmp[i] = (char)toupper((unsigned char)buf[i]);
    iop_stream_write(s, tmp, n);
}

static void up_datagram(iop_datagram *d, const char *buf, size_t n)
{
    char tmp[65536];
    for (size_t i = 0; i < n; i++)
        tmp[i] = (char)toupper((unsigned char)buf[i]);
    iop_datagram_reply(d, tmp, n);
}

static const struct iop_handler up_handler = {.on_data = up_data, .on_datagram = up_datagram};

static struct iop_server_config up_config(void)
{
    return (struct iop_server_config){
        .model = IOP_MODEL_EVENT, .handler = &up_handler, .grace_ms = 3000};
}

static void expect_upper(int fd, const char *msg)
{
    size_t n = strlen(msg);
    char want[256], got[256];
    for (size_t i = 0; i < n; i++)
        want[i] = (char)toupper((unsigned char)msg[i]);
    put(fd, msg, n);
    size_t have = 0;
    while (have < n) {
        ssize_t r = get_some(fd, got + have, n - have);
        if (r <= 0)
            iop_test_fail(__FILE__, __LINE__, "reply: %s", r == 0 ? "EOF" : iop_strerror((int)r));
        have += (size_t)r;
    }
    CHECK(!memcmp(got, want, n));
}

IOP_TEST(tcp_unix_udp_on_one_server, be)
{
    char upath[64];
    snprintf(upath, sizeof upath, "unix:/tmp/iop-ev-%d.sock", (int)getpid());
    const char *addrs[] = {"127.0.0.1:0", upath, "udp:127.0.0.1:0"};
    struct fixture f;
    fixture_start_addrs(&f, be, up_config(), addrs, 3);
    int t = client(&f, 0);
    expect_upper(t, "over tcp");

    int u = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(connect(u, &f.addr[1].u.sa, f.addr[1].len) == 0);
    struct timeval tv = {5, 0};
    setsockopt(u, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    expect_upper(u, "over unix");

    int d = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    setsockopt(d, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    CHECK(sendto(d, "a datagram", 10, 0, &f.addr[2].u.sa, f.addr[2].len) == 10);
    char buf[32];
    CHECK_EQ(recv(d, buf, sizeof buf, 0), 10);
    CHECK(!memcmp(buf, "A DATAGRAM", 10));
    close(t);
    close(u);
    close(d);
    fixture_stop(&f);
    CHECK(access(upath + 5, F_OK) < 0); /* server_close removed its socket file */
}

static void *pump(void *arg)
{
    int fd = *(int *)arg;
    char *buf = malloc(1 << 20);
    for (int i = 0; i < 1 << 20; i++)
        buf[i] = (char)('a' + i % 26);
    put(fd, buf, 1 << 20);
    shutdown(fd, SHUT_WR);
    free(buf);
    return NULL;
}

/* 1 MiB through, then the client's EOF: it gets all it is owed, then EOF. */
IOP_TEST(mib_then_half_close, be)
{
    struct fixture f;
    fixture_start(&f, be, up_config(), 1);
    int fd = client(&f, 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, pump, &fd) == 0);
    char buf[65536];
    size_t got = 0;
    ssize_t r;
    while ((r = get_some(fd, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < r; i++)
            CHECK_EQ(buf[i], 'A' + (int)((got + (size_t)i) % 26));
        got += (size_t)r;
    }
    CHECK_EQ(r, 0);
    CHECK_EQ(got, 1 << 20);
    pthread_join(th, NULL);
    close(fd);
    fixture_stop(&f);
}

IOP_TEST(workers_share_the_port, be)
{
    struct iop_server_config cfg = up_config();
    cfg.workers = 3;
    struct fixture f;
    fixture_start(&f, be, cfg, 1);
    int fds[30];
    for (int i = 0; i < 30; i++)
        fds[i] = client(&f, 0);
    for (int i = 0; i < 30; i++)
        expect_upper(fds[i], "worker");
    for (int i = 0; i < 30; i++)
        close(fds[i]);
    fixture_stop(&f);
}

IOP_TEST(processes_and_workers, be)
{
    struct iop_server_config cfg = up_config();
    cfg.workers = 2;
    cfg.processes = 2;
    const char *addrs[] = {"127.0.0.1:0", "udp:127.0.0.1:0"};
    struct fixture f;
    fixture_start_addrs(&f, be, cfg, addrs, 2);
    int fds[20];
    for (int i = 0; i < 20; i++)
        fds[i] = client(&f, 0);
    for (int i = 0; i < 20; i++)
        expect_upper(fds[i], "process");
    for (int i = 0; i < 20; i++)
        close(fds[i]);
    fixture_stop(&f); /* the parent forwards SIGTERM; all must exit 0 */
}

/* A loop that cannot start fails iop_server_run with its -errno, also when
 * workers after the failed one were never set up. */
IOP_TEST(run_fails_when_a_loop_cannot_start, be)
{
    (void)be;
    struct iop_server_config cfg = up_config();
    cfg.workers = 2;
    cfg.backend = IOP_BACKEND_SELECT; /* select has no edge mode */
    cfg.loop_flags = IOP_LOOP_EDGE;
    iop_server *srv;
    CHECK_OK(iop_server_new(&cfg, &srv));
    CHECK(iop_server_listen(srv, "127.0.0.1:0") >= 0);
    CHECK_EQ(iop_server_run(srv), -ENOTSUP);
    iop_server_free(srv);
}

/* A worker process that dies is restarted, and the port keeps serving. */
IOP_TEST(dead_worker_process_is_restarted, be)
{
    struct iop_server_config cfg = up_config();
    cfg.processes = 1;
    struct fixture f;
    fixture_start(&f, be, cfg, 1);
    int fd = client(&f, 0);
    expect_upper(fd, "first");
    /* The worker is the only child of the supervising process. */
    char cmd[128];
    snprintf(cmd, sizeof cmd, "pkill -KILL -P %d", (int)f.pid);
    CHECK(system(cmd) == 0);
    close(fd);
    long long end = iop_test_now_ms() + 5000;
    int ok = 0;
    while (!ok && iop_test_now_ms() < end) {
        usleep(50000);
        int c = client(&f, 0);
        put(c, "again", 5);
        char buf[8];
        ok = get_some(c, buf, 5) == 5 && !memcmp(buf, "AGAIN", 5);
        close(c);
    }
    CHECK(ok);
    fixture_stop(&f);
}

IOP_TEST(max_conns_stops_accepting, be)
{
    struct iop_server_config cfg = up_config();
    cfg.max_conns = 2;
    struct fixture f;
    fixture_start(&f, be, cfg, 1);
    int a = client(&f, 0), b = client(&f, 0);
    expect_upper(a, "one");
    expect_upper(b, "two");
    int c = client(&f, 0); /* connects (backlog) but is not served */
    put(c, "three", 5);
    expect_silence(c, 300);
    close(a);
    char buf[8];
    CHECK_EQ(get_some(c, buf, 5), 5);
    CHECK(!memcmp(buf, "THREE", 5));
    close(b);
    close(c);
    fixture_stop(&f);
}

IOP_TEST(idle_timeout_closes, be)
{
    struct iop_server_config cfg = up_config();
    cfg.idle_timeout_ms = 200;
    struct fixture f;
    fixture_start(&f, be, cfg, 1);
    int fd = client(&f, 0);
    /* Timed from before the last bytes: the server's idle clock cannot
     * start earlier, however late the reply reaches us under load. */
    long long t0 = iop_test_now_ms();
    expect_upper(fd, "then silence");
    expect_eof(fd);
    long long took = iop_test_now_ms() - t0;
    CHECK(took >= 190 && took < 3000);
    close(fd);
    fixture_stop(&f);
}

/* Graceful stop: accepting stops, bytes already sent are answered, the
 * connection is then closed and run returns 0 well before the grace. */
IOP_TEST(graceful_stop_answers_in_flight, be)
{
    struct fixture f;
    fixture_start(&f, be, up_config(), 1);
    int fd = client(&f, 0);
    expect_upper(fd, "warm");
    put(fd, "in flight", 9);
    usleep(50000);
    fixture_shutdown(&f);
    char buf[16];
    size_t have = 0;
    while (have < 9) {
        ssize_t r = get_some(fd, buf + have, 9 - have);
        CHECK(r > 0);
        have += (size_t)r;
    }
    CHECK(!memcmp(buf, "IN FLIGHT", 9));
    expect_eof(fd);
    CHECK(fixture_join(&f) < 2000);
    close(fd);
}

/* on_stop replaces the default end: this one sends a goodbye first, and
 * iop_server_stopping says a stop is under way. */
static void bye_stop(iop_stream *s)
{
    const char *msg = iop_server_stopping(iop_stream_server(s)) == 1 ? "bye" : "???";
    iop_stream_write(s, msg, 3);
    iop_stream_end(s);
}

IOP_TEST(on_stop_hook, be)
{
    struct iop_handler h = up_handler;
    h.on_stop = bye_stop;
    struct iop_server_config cfg = up_config();
    cfg.handler = &h;
    struct fixture f;
    fixture_start(&f, be, cfg, 1);
    int fd = client(&f, 0);
    expect_upper(fd, "warm");
    CHECK_EQ(iop_server_stopping(f.srv), 0);
    fixture_shutdown(&f);
    char buf[4] = {0};
    size_t have = 0;
    while (have < 3) {
        ssize_t r = get_some(fd, buf + have, 3 - have);
        CHECK(r > 0);
        have += (size_t)r;
    }
    CHECK(!memcmp(buf, "bye", 3));
    expect_eof(fd);
    CHECK(fixture_join(&f) < 2000);
    close(fd);
}

/* The grace period ends what does not end by itself. */
static void hold_data(iop_stream *s, const char *buf, size_t n)
{
    (void)buf;
    (void)n;
    /* A big answer to a client that never reads: end() has to wait for a
     * queue that never drains. */
    if (iop_stream_data(s))
        return;
    iop_stream_set_data(s, s);
    char *big = calloc(1, 8 << 20);
    iop_stream_write(s, big, 8 << 20);
    free(big);
}

static void hold_eof(iop_stream *s)
{
    (void)s;
}

IOP_TEST(grace_period_is_a_limit, be)
{
    static const struct iop_handler h = {.on_data = hold_data, .on_eof = hold_eof};
    struct iop_server_config cfg = {.handler = &h, .grace_ms = 300};
    struct fixture f;
    fixture_start(&f, be, cfg, 1);
    int fd = client(&f, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    put(fd, "y", 1);
    usleep(100000);
    fixture_shutdown(&f);
    long long took = fixture_join(&f);
    CHECK(took >= 200 && took < 3000);
    close(fd);
}

IOP_TEST(stop_now_on_second_shutdown, be)
{
    struct iop_server_config cfg = up_config();
    cfg.grace_ms = 60000;
    struct fixture f;
    fixture_start(&f, be, cfg, 1);
    int fd = client(&f, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    char buf[65536];
    memset(buf, 'q', sizeof buf);
    for (int i = 0; i < 32; i++)
        put(fd, buf, sizeof buf); /* answers pile up: the client never reads */
    usleep(100000);
    fixture_shutdown(&f);
    usleep(100000);
    fixture_shutdown(&f);
    CHECK(fixture_join(&f) < 2000);
    close(fd);
}

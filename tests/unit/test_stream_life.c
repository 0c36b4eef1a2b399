/* test_stream_life.c - streams: contexts and handles, a thousand streams, high fds, the idle clock,
 * closing from every callback. Helpers and the pair/peer model: stream_helpers.h. */
#include "stream_helpers.h"

/* ---- context and handle basics ---------------------------------------- */

IOP_TEST(ctx_basics, be)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config none = {0};
    iop_stream_ctx *bad = NULL;
    CHECK_EQ(iop_stream_ctx_new(l, &none, &bad), -EINVAL);

    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    CHECK_EQ(iop_stream_ctx_count(ctx), 0);
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    CHECK(!(fcntl(sv[0], F_GETFL) & O_NONBLOCK));
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    CHECK_EQ(iop_stream_ctx_count(ctx), 1);
    /* The stream made its fd non-blocking. */
    CHECK(fcntl(sv[0], F_GETFL) & O_NONBLOCK);
    CHECK_EQ(iop_stream_queued(c.s), 0);
    CHECK_EQ(iop_stream_ctx_free(ctx), -EBUSY);

    /* Closed but on_close not yet run: still counts. */
    c.in_close = 1;
    iop_stream_close(c.s);
    c.in_close = 0;
    CHECK_EQ(c.closes, 0);
    CHECK_EQ(iop_stream_ctx_free(ctx), -EBUSY);
    CHECK_EQ(iop_stream_write(c.s, "x", 1), -EPIPE);
    WAIT_FOR(l, c.closes == 1, 2000);
    settle(l, 20);
    CHECK_EQ(c.closes, 1);
    /* The stream closed its fd: the peer sees EOF. */
    char b;
    struct pollfd pfd = {.fd = sv[1], .events = POLLIN};
    CHECK_EQ(poll(&pfd, 1, 1000), 1);
    CHECK_EQ(read(sv[1], &b, 1), 0);
    CHECK_EQ(iop_stream_ctx_count(ctx), 0);
    CHECK_OK(iop_stream_ctx_free(ctx));
    close(sv[1]);
    iop_test_loop_free(l);
}

/* iop_stream_open owns the fd even when it fails: a bad fd is refused and
 * nothing leaks. */
IOP_TEST(open_bad_fd, be)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    iop_stream *s = NULL;
    int rc = iop_stream_open(ctx, -1, &s);
    CHECK(rc < 0);
    CHECK_EQ(iop_stream_ctx_count(ctx), 0);
    CHECK_OK(iop_stream_ctx_free(ctx));
    iop_test_loop_free(l);
}

/* ---- many streams ------------------------------------------------------ */

#define NSTREAMS  1000
#define ECHO_SIZE 100

struct many {
    iop_timer reader;
    int *client; /* peers, moved to fds >= 2048 (FD_SETSIZE is 1024) */
    size_t *got;
    int complete;
    int all_read;
};

static void many_reader_cb(iop_timer *t)
{
    struct many *m = t->data;
    unsigned char buf[ECHO_SIZE + 1];
    for (int i = 0; i < NSTREAMS; i++) {
        if (m->got[i] == ECHO_SIZE)
            continue;
        ssize_t n = recv(m->client[i], buf, sizeof buf, 0);
        if (n < 0 && errno == EAGAIN)
            continue;
        if (n <= 0)
            iop_test_fail(__FILE__, __LINE__, "client %d: recv %zd (%s)", i, n, strerror(errno));
        CHECK(m->got[i] + (size_t)n <= ECHO_SIZE);
        verify(buf, 1000 + (unsigned)i, m->got[i], (size_t)n, "echo client");
        m->got[i] += (size_t)n;
        if (m->got[i] == ECHO_SIZE)
            m->complete++;
    }
    if (m->complete == NSTREAMS) {
        m->all_read = 1;
        iop_timer_stop(t);
    }
}

IOP_TEST(thousand_streams, be)
{
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 2048 + NSTREAMS + 64)
        IOP_SKIP("RLIMIT_NOFILE too low for 1000 streams");
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    struct sockaddr_in addr;
    int lfd = tcp_listener(&addr, 64);
    struct conn *conns = calloc(NSTREAMS, sizeof *conns);
    struct many m = {0};
    m.client = calloc(NSTREAMS, sizeof *m.client);
    m.got = calloc(NSTREAMS, sizeof *m.got);
    CHECK(conns && m.client && m.got);
    for (int i = 0; i < NSTREAMS; i++) {
        int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK(c >= 0);
        CHECK(connect(c, (struct sockaddr *)&addr, sizeof addr) == 0);
        m.client[i] = fcntl(c, F_DUPFD_CLOEXEC, 2048);
        CHECK(m.client[i] >= 2048);
        close(c);
        set_nonblock(m.client[i]);
        int s = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        CHECK(s >= 0);
        conns[i].act = ACT_ECHO | ACT_CLOSE_EOF;
        conns[i].recv_seed = 1000 + (unsigned)i;
        conn_open(ctx, &cfg, &conns[i], s);
        CHECK_OK(iop_stream_read_start(conns[i].s));
    }
    close(lfd);
    CHECK_EQ(iop_stream_ctx_count(ctx), NSTREAMS);

    /* Every client sends its 100 bytes in two pieces, all before the loop
     * runs, so that all streams are busy at once. */
    for (int piece = 0; piece < 2; piece++) {
        size_t off = piece ? 37 : 0, len = piece ? ECHO_SIZE - 37 : 37;
        for (int i = 0; i < NSTREAMS; i++) {
            unsigned char buf[ECHO_SIZE];
            fill(buf, 1000 + (unsigned)i, off, len);
            CHECK_EQ(send(m.client[i], buf, len, MSG_NOSIGNAL), (ssize_t)len);
        }
        settle(l, 5);
    }
    iop_timer_init(&m.reader, many_reader_cb);
    m.reader.data = &m;
    CHECK_OK(iop_timer_start(l, &m.reader, 1, 2));
    WAIT_FOR(l, m.all_read, 20000);
    for (int i = 0; i < NSTREAMS; i++)
        CHECK_EQ(conns[i].got, ECHO_SIZE);

    /* The clients leave; each stream closes on EOF. */
    for (int i = 0; i < NSTREAMS; i++)
        close(m.client[i]);
    WAIT_FOR(l, iop_stream_ctx_count(ctx) == 0, 10000);
    for (int i = 0; i < NSTREAMS; i++) {
        CHECK_EQ(conns[i].eofs, 1);
        CHECK_EQ(conns[i].closes, 1);
        CHECK_EQ(conns[i].errs, 0);
    }
    CHECK_OK(iop_stream_ctx_free(ctx));
    free(conns);
    free(m.client);
    free(m.got);
    iop_test_loop_free(l);
}

/* select cannot watch fd >= FD_SETSIZE: a stream on such an fd is refused
 * with an error (and the fd closed), never memory corruption; every other
 * backend serves it. */
IOP_TEST(high_fd, be)
{
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < FD_SETSIZE + 600)
        IOP_SKIP("RLIMIT_NOFILE too low");
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(PAIR_UNIX, sv);
    int hi = fcntl(sv[0], F_DUPFD_CLOEXEC, FD_SETSIZE + 500);
    CHECK(hi >= FD_SETSIZE);
    close(sv[0]);
    struct conn c = {.recv_seed = 95};
    int select_be = !(iop_loop_caps(l) & IOP_CAP_ANY_FD);
    int rc = iop_stream_open(ctx, hi, &c.s);
    if (rc < 0) {
        CHECK(select_be);
        CHECK(!fd_is_open(hi)); /* owned, also on failure */
    } else {
        iop_stream_set_data(c.s, &c);
        rc = iop_stream_read_start(c.s);
        if (select_be) {
            CHECK(rc < 0);
        } else {
            CHECK_OK(rc);
            unsigned char buf[100];
            fill(buf, 95, 0, sizeof buf);
            CHECK_EQ(send(sv[1], buf, sizeof buf, MSG_NOSIGNAL), 100);
            WAIT_FOR(l, c.got == 100, 5000);
        }
        conn_finish(l, ctx, &c);
        ctx = NULL;
    }
    if (ctx)
        CHECK_OK(iop_stream_ctx_free(ctx));
    close(sv[1]);
    iop_test_loop_free(l);
}

/* ---- idle timeout ------------------------------------------------------ */

struct idle {
    iop_timer tick;
    int peer_fd;      /* B: the peer writes a byte each tick */
    struct conn *out; /* C: the stream writes a byte each tick */
    int ticks;
};

static void idle_tick_cb(iop_timer *t)
{
    struct idle *d = t->data;
    d->ticks++;
    CHECK_EQ(send(d->peer_fd, "b", 1, MSG_NOSIGNAL), 1);
    if (!d->out->errs)
        CHECK(iop_stream_write(d->out->s, "c", 1) >= 0);
}

/* idle_timeout_ms = 100: an idle stream gets on_read(-ETIMEDOUT) after 100 ms
 * to ~2 s and closes itself; streams with bytes in (B) or out (C) every 30 ms
 * live on, and time out once quiet. */
IOP_TEST_BOTH(idle_timeout)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    cfg.idle_timeout_ms = 100;
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int a[2], b[2], cc[2];
    make_pair(kind, a);
    make_pair(kind, b);
    make_pair(kind, cc);
    struct conn ca = {0}, cb = {.act = ACT_KEEP}, ccn = {0};
    unsigned char sink[1024];
    cb.keep = sink;
    cb.keep_cap = sizeof sink;
    iop_loop_update_time(l);
    long long t0 = iop_test_now_ms();
    conn_open(ctx, &cfg, &ca, a[0]);
    conn_open(ctx, &cfg, &cb, b[0]);
    conn_open(ctx, &cfg, &ccn, cc[0]);
    CHECK_OK(iop_stream_read_start(ca.s));
    CHECK_OK(iop_stream_read_start(cb.s));
    CHECK_OK(iop_stream_read_start(ccn.s));
    struct idle d = {.peer_fd = b[1], .out = &ccn};
    iop_timer_init(&d.tick, idle_tick_cb);
    d.tick.data = &d;
    CHECK_OK(iop_timer_start(l, &d.tick, 30, 30));

    WAIT_FOR(l, ca.errs, 3000);
    CHECK_EQ(ca.last_err, -ETIMEDOUT);
    long long at = ca.err_at - t0;
    if (at < 99 || at > 2000)
        iop_test_fail(__FILE__, __LINE__, "idle stream timed out after %lld ms", at);
    WAIT_FOR(l, ca.closes == 1, 2000); /* it closed itself */
    char x;
    struct pollfd pfd = {.fd = a[1], .events = POLLIN};
    CHECK_EQ(poll(&pfd, 1, 1000), 1);
    CHECK_EQ(read(a[1], &x, 1), 0); /* its peer sees EOF */

    /* B and C, busy, live on (400 ms from the start at least). */
    long long left = 400 - (iop_test_now_ms() - t0);
    if (left > 0)
        settle(l, (int)left);
    CHECK_EQ(cb.errs, 0);
    CHECK_EQ(ccn.errs, 0);
    CHECK(d.ticks >= 5);
    CHECK(cb.got >= 5);
    /* Quiet now: both time out too. */
    iop_timer_stop(&d.tick);
    long long t1 = iop_test_now_ms();
    WAIT_FOR(l, cb.errs && ccn.errs, 3000);
    CHECK(cb.err_at - t1 >= 99 - 30);
    CHECK_EQ(cb.last_err, -ETIMEDOUT);
    CHECK_EQ(ccn.last_err, -ETIMEDOUT);
    WAIT_FOR(l, cb.closes && ccn.closes, 2000);
    CHECK_OK(iop_stream_ctx_free(ctx));
    close(a[1]);
    close(b[1]);
    close(cc[1]);
    iop_test_loop_free(l);
}

/* ---- closing from every callback -------------------------------------- */

/* on_read with data: close; no further on_read although more bytes are
 * there (small read buffers: uring has more completions in flight). */
IOP_TEST_BOTH(close_in_read_data)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    cfg.read_size = 16;
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {.act = ACT_CLOSE_DATA, .recv_seed = 101};
    conn_open(ctx, &cfg, &c, sv[0]);
    unsigned char buf[4000];
    fill(buf, 101, 0, sizeof buf);
    CHECK_EQ(send(sv[1], buf, sizeof buf, MSG_NOSIGNAL), (ssize_t)sizeof buf);
    CHECK_OK(iop_stream_read_start(c.s));
    WAIT_FOR(l, c.closes, 5000);
    settle(l, 20);
    CHECK_EQ(c.reads, 1);
    CHECK_EQ(c.closes, 1);
    CHECK(c.got <= 16);
    CHECK_OK(iop_stream_ctx_free(ctx));
    close(sv[1]);
    iop_test_loop_free(l);
}

IOP_TEST_BOTH(close_in_read_eof)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {.act = ACT_CLOSE_EOF, .recv_seed = 102};
    conn_open(ctx, &cfg, &c, sv[0]);
    CHECK_OK(iop_stream_read_start(c.s));
    unsigned char buf[3000];
    fill(buf, 102, 0, sizeof buf);
    CHECK_EQ(send(sv[1], buf, sizeof buf, MSG_NOSIGNAL), (ssize_t)sizeof buf);
    CHECK(shutdown(sv[1], SHUT_WR) == 0);
    WAIT_FOR(l, c.closes, 5000);
    settle(l, 20);
    CHECK_EQ(c.got, sizeof buf); /* the bytes came before the EOF */
    CHECK_EQ(c.eofs, 1);
    CHECK_EQ(c.closes, 1);
    CHECK_OK(iop_stream_ctx_free(ctx));
    close(sv[1]);
    iop_test_loop_free(l);
}

IOP_TEST(close_in_read_error, be)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(PAIR_TCP, sv);
    struct conn c = {.act = ACT_CLOSE_ERR};
    conn_open(ctx, &cfg, &c, sv[0]);
    CHECK_OK(iop_stream_read_start(c.s));
    settle(l, 5);
    close_rst(sv[1]);
    WAIT_FOR(l, c.closes, 5000);
    settle(l, 20);
    CHECK_EQ(c.errs, 1);
    CHECK_EQ(c.last_err, -ECONNRESET);
    CHECK_EQ(c.closes, 1);
    CHECK_OK(iop_stream_ctx_free(ctx));
    iop_test_loop_free(l);
}

/* on_drain: close.  The peer gets a byte-exact prefix, then EOF. */
IOP_TEST_BOTH(close_in_drain)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    cfg.high_water = 16 * KiB;
    cfg.low_water = 4 * KiB;
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {.act = ACT_CLOSE_DRAIN};
    conn_open(ctx, &cfg, &c, sv[0]);
    conn_produce(&c, 103, 64 * MiB, 65536);
    CHECK_EQ(c.fulls, 1);
    struct peer p = {.reading = 1, .recv_seed = 103};
    peer_start(l, &p, sv[1]);
    WAIT_FOR(l, c.closes, 10000);
    CHECK_EQ(c.drains, 1);
    WAIT_FOR(l, p.eof || p.err, 5000);
    CHECK(p.got <= c.off);
    CHECK_OK(iop_stream_ctx_free(ctx));
    peer_stop(&p);
    close(sv[1]);
    free(c.scratch);
    iop_test_loop_free(l);
}

/* close inside on_close is a no-op; close right after open (no callback
 * ever ran) still ends in exactly one on_close, later. */
IOP_TEST(close_in_close_and_at_once, be)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int a[2], b[2];
    make_pair(PAIR_UNIX, a);
    make_pair(PAIR_UNIX, b);
    struct conn ca = {.act = ACT_CLOSE_CLOSE}, cb = {0};
    conn_open(ctx, &cfg, &ca, a[0]);
    conn_open(ctx, &cfg, &cb, b[0]);
    CHECK_OK(iop_stream_read_start(cb.s));
    conn_close_now(&ca);
    conn_close_now(&cb);
    CHECK_EQ(iop_stream_ctx_free(ctx), -EBUSY);
    WAIT_FOR(l, ca.closes && cb.closes, 2000);
    settle(l, 20);
    CHECK_EQ(ca.closes, 1);
    CHECK_EQ(cb.closes, 1);
    CHECK_EQ(cb.reads + cb.eofs + cb.errs, 0);
    CHECK_OK(iop_stream_ctx_free(ctx));
    close(a[1]);
    close(b[1]);
    iop_test_loop_free(l);
}

/* Closing with MiBs queued and (uring) sends in flight frees everything. */
IOP_TEST_BOTH(close_with_queue)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    CHECK_OK(iop_stream_read_start(c.s));
    unsigned char *buf = malloc(MiB);
    CHECK(buf);
    fill(buf, 104, 0, MiB);
    for (int i = 0; i < 6; i++) {
        int rc = iop_stream_write(c.s, buf, MiB);
        CHECK(rc == 0 || rc == 1);
        note_full(&c, rc);
    }
    free(buf);
    CHECK(iop_loop_run(l, IOP_RUN_NOWAIT) >= 0); /* submitted, in flight */
    conn_close_now(&c);
    WAIT_FOR(l, c.closes, 5000);
    CHECK_OK(iop_stream_ctx_free(ctx));
    close(sv[1]);
    iop_test_loop_free(l);
}

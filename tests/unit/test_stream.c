/* test_stream.c - the stream suite (include/ioplex/stream.h), run once per
 * backend variant.
 *
 * One side of each connected pair is a stream; the other is a raw
 * non-blocking fd that the test drives from the same loop with a
 * level-triggered iop_io watcher ("the peer"), so that large transfers never
 * deadlock and every wait is bounded by a timer.  Pairs come from
 * socketpair(AF_UNIX) and from TCP loopback; tests that run on both are
 * registered twice, as NAME_unix and NAME_tcp, so a failure names the kind.
 *
 * Every byte that crosses a stream is a pattern byte (pat(seed, offset)) and
 * is checked on arrival: "byte-exact" here means every byte, in order. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ioplex/stream.h"
#include "runner.h"

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)

enum pair_kind { PAIR_UNIX, PAIR_TCP };

/* Runs body(be, kind) as two tests, NAME_unix and NAME_tcp. */
#define IOP_TEST_BOTH(name)                                                                        \
    static void name(const struct iop_test_backend *be, enum pair_kind kind);                      \
    IOP_TEST(name##_unix, be)                                                                      \
    {                                                                                              \
        name(be, PAIR_UNIX);                                                                       \
    }                                                                                              \
    IOP_TEST(name##_tcp, be)                                                                       \
    {                                                                                              \
        name(be, PAIR_TCP);                                                                        \
    }                                                                                              \
    static void name(const struct iop_test_backend *be, enum pair_kind kind)

/* ---- bytes ------------------------------------------------------------ */

/* Byte i of stream "seed": no short period, so a lost, repeated or reordered
 * chunk of any size shows. */
static unsigned char pat(unsigned seed, size_t i)
{
    uint32_t x = (uint32_t)i * 2654435761u + seed * 40503u + (uint32_t)(i >> 32);
    x ^= x >> 15;
    return (unsigned char)(x ^ (x >> 8) ^ seed);
}

static void fill(unsigned char *buf, unsigned seed, size_t off, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = pat(seed, off + i);
}

/* Fails the test at the first byte that is not the pattern. */
static void verify(const void *buf, unsigned seed, size_t off, size_t len, const char *who)
{
    const unsigned char *b = buf;
    for (size_t i = 0; i < len; i++)
        if (b[i] != pat(seed, off + i))
            iop_test_fail(__FILE__, __LINE__, "%s: byte %zu is 0x%02x, expected 0x%02x", who,
                          off + i, b[i], pat(seed, off + i));
}

/* ---- connected pairs -------------------------------------------------- */

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    CHECK(fl >= 0);
    CHECK(fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0);
}

static int tcp_listener(struct sockaddr_in *addr, int backlog)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(l >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(l, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(l, backlog) == 0);
    socklen_t alen = sizeof *addr;
    CHECK(getsockname(l, (struct sockaddr *)addr, &alen) == 0);
    return l;
}

/* sv[0]: the accepted side (becomes the stream), sv[1]: the connecting side
 * (the peer).  Both non-blocking, CLOEXEC. */
static void tcp_pair(int sv[2])
{
    struct sockaddr_in addr;
    int l = tcp_listener(&addr, 1);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(c >= 0);
    CHECK(connect(c, (struct sockaddr *)&addr, sizeof addr) == 0);
    int s = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    CHECK(s >= 0);
    close(l);
    set_nonblock(c);
    sv[0] = s;
    sv[1] = c;
}

static void make_pair(enum pair_kind kind, int sv[2])
{
    if (kind == PAIR_TCP)
        tcp_pair(sv);
    else
        CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
}

/* Close with RST instead of FIN (TCP). */
static void close_rst(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    CHECK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    close(fd);
}

/* ---- waiting ---------------------------------------------------------- */

struct waiter {
    iop_loop *loop;
    iop_timer guard, tick;
    int expired;
};

static void waiter_guard_cb(iop_timer *t)
{
    *(int *)t->data = 1;
}

static void waiter_tick_cb(iop_timer *t)
{
    (void)t;
}

static void waiter_start(struct waiter *w, iop_loop *l, int timeout_ms)
{
    w->loop = l;
    w->expired = 0;
    iop_timer_init(&w->guard, waiter_guard_cb);
    w->guard.data = &w->expired;
    CHECK_OK(iop_timer_start(l, &w->guard, (uint64_t)timeout_ms, 0));
    /* A timer that is due when an iteration starts runs before the wait,
     * and IOP_RUN_ONCE then still waits for an event: the tick bounds that
     * wait, so a condition set by such a timer is seen within 10 ms. */
    iop_timer_init(&w->tick, waiter_tick_cb);
    CHECK_OK(iop_timer_start(l, &w->tick, 10, 10));
}

static void waiter_end(struct waiter *w)
{
    iop_timer_stop(&w->guard);
    iop_timer_stop(&w->tick);
}

static void waiter_step(struct waiter *w, int mode, const char *file, int line, const char *what)
{
    if (w->expired)
        iop_test_fail(file, line, "timed out waiting for %s", what);
    int rc = iop_loop_run(w->loop, mode);
    if (rc < 0)
        iop_test_fail(file, line, "iop_loop_run: %s", iop_strerror(rc));
}

/* Run the loop until cond holds; fail after ms milliseconds.  cond is
 * re-evaluated after every iteration (a guard timer bounds each wait).
 * IOP_RUN_ONCE runs deferred callbacks (the stream's on_close, for one)
 * before it waits, so a NOWAIT iteration after each ONCE lets cond see what
 * callbacks deferred by the last one did, without waiting for another
 * event. */
#define WAIT_FOR(l, cond, ms)                                                                      \
    do {                                                                                           \
        struct waiter w_;                                                                          \
        waiter_start(&w_, (l), (ms));                                                              \
        while (!(cond)) {                                                                          \
            waiter_step(&w_, IOP_RUN_NOWAIT, __FILE__, __LINE__, #cond);                           \
            if (cond)                                                                              \
                break;                                                                             \
            waiter_step(&w_, IOP_RUN_ONCE, __FILE__, __LINE__, #cond);                             \
        }                                                                                          \
        waiter_end(&w_);                                                                           \
    } while (0)

/* Run the loop for ms milliseconds, whatever happens. */
static void settle(iop_loop *l, int ms)
{
    struct waiter w;
    waiter_start(&w, l, ms);
    while (!w.expired)
        CHECK(iop_loop_run(l, IOP_RUN_ONCE) >= 0);
    waiter_end(&w);
}

/* ---- the peer: a raw fd driven by the loop ---------------------------- */

struct peer {
    iop_io io;
    unsigned char *scratch;
    size_t scratch_len;
    /* Sending: send_total bytes, send_chunk per send(2), of the pattern
     * send_seed (or of send_data when set); then SHUT_WR if shut_after. */
    size_t send_total, sent, send_chunk;
    unsigned send_seed;
    const unsigned char *send_data;
    int shut_after;
    /* Receiving (while reading): recv_chunk per recv(2), checked against the
     * pattern recv_seed from offset 0, or stored in keep (keep_cap bytes). */
    int reading;
    size_t recv_chunk, got;
    unsigned recv_seed;
    unsigned char *keep;
    size_t keep_cap;
    int eof, err;
};

static size_t peer_max(size_t a, size_t b)
{
    return a > b ? a : b;
}

static void peer_update(struct peer *p)
{
    unsigned ev = IOP_LEVEL;
    if (p->reading && !p->eof && !p->err)
        ev |= IOP_READ;
    if (p->sent < p->send_total && !p->err)
        ev |= IOP_WRITE;
    CHECK_OK(iop_io_modify(&p->io, ev));
}

static void peer_recv(struct peer *p)
{
    /* Bounded per callback so that one busy peer cannot starve the loop. */
    for (size_t budget = 4 * MiB; budget > 0;) {
        size_t want = p->recv_chunk < p->scratch_len ? p->recv_chunk : p->scratch_len;
        ssize_t n = recv(p->io.fd, p->scratch, want, 0);
        if (n == 0) {
            p->eof = 1;
            return;
        }
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                p->err = errno;
            return;
        }
        if (p->keep) {
            if (p->got + (size_t)n > p->keep_cap)
                iop_test_fail(__FILE__, __LINE__, "peer: more than the %zu bytes expected",
                              p->keep_cap);
            memcpy(p->keep + p->got, p->scratch, (size_t)n);
        } else {
            verify(p->scratch, p->recv_seed, p->got, (size_t)n, "peer received");
        }
        p->got += (size_t)n;
        budget = (size_t)n >= budget ? 0 : budget - (size_t)n;
    }
}

static void peer_send(struct peer *p)
{
    for (size_t budget = 4 * MiB; budget > 0 && p->sent < p->send_total;) {
        size_t n = p->send_total - p->sent;
        if (n > p->send_chunk)
            n = p->send_chunk;
        const unsigned char *src = p->scratch;
        if (p->send_data)
            src = p->send_data + p->sent;
        else
            fill(p->scratch, p->send_seed, p->sent, n);
        ssize_t w = send(p->io.fd, src, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR)
                p->err = errno;
            return;
        }
        p->sent += (size_t)w;
        budget = (size_t)w >= budget ? 0 : budget - (size_t)w;
    }
    if (p->sent == p->send_total && p->shut_after) {
        CHECK(shutdown(p->io.fd, SHUT_WR) == 0);
        p->shut_after = 0;
    }
}

static void peer_cb(iop_io *w, unsigned revents)
{
    struct peer *p = w->data;
    if ((revents & (IOP_READ | IOP_ERROR)) && p->reading && !p->eof)
        peer_recv(p);
    if ((revents & IOP_WRITE) || (p->sent == p->send_total && p->shut_after))
        peer_send(p);
    peer_update(p);
}

/* Start driving fd (the test keeps ownership of it: peer_stop, then close). */
static void peer_start(iop_loop *l, struct peer *p, int fd)
{
    p->scratch_len = peer_max(64 * KiB, peer_max(p->send_chunk, p->recv_chunk));
    p->scratch = malloc(p->scratch_len);
    CHECK(p->scratch);
    if (!p->recv_chunk)
        p->recv_chunk = 64 * KiB;
    if (!p->send_chunk)
        p->send_chunk = 64 * KiB;
    iop_io_init(&p->io, fd, peer_cb);
    p->io.data = p;
    CHECK_OK(iop_io_start(l, &p->io, IOP_LEVEL));
    peer_update(p);
}

static void peer_stop(struct peer *p)
{
    iop_io_stop(&p->io);
    free(p->scratch);
    p->scratch = NULL;
}

/* ---- the stream side -------------------------------------------------- */

/* What the generic callbacks do besides counting. */
#define ACT_ECHO        0x01u /* write back what arrives; read_stop while full */
#define ACT_CLOSE_DATA  0x02u /* close in on_read with data */
#define ACT_CLOSE_EOF   0x04u /* close in on_read(0) */
#define ACT_CLOSE_ERR   0x08u /* close in on_read(<0) */
#define ACT_CLOSE_DRAIN 0x10u /* close in on_drain */
#define ACT_CLOSE_CLOSE 0x20u /* call close again inside on_close */
#define ACT_KEEP        0x40u /* store arrivals in keep instead of checking */

struct conn {
    iop_stream *s;
    unsigned act;
    size_t high, low; /* effective marks (config 0 resolved) */
    /* received */
    unsigned recv_seed;
    size_t got;
    unsigned char *keep;
    size_t keep_cap;
    int reads, eofs, errs, last_err;
    long long err_at;
    int data_after_eof;
    /* produced with produce(): total bytes of pattern seed, chunk a write */
    unsigned seed;
    size_t total, off, chunk;
    unsigned char *scratch;
    int fulls, drains;
    /* closing */
    int in_close, closes;
    long long closed_at;
};

static void conn_close_now(struct conn *c)
{
    c->in_close = 1;
    iop_stream_close(c->s);
    c->in_close = 0;
    CHECK_EQ(c->closes, 0); /* on_close never runs inside close */
    /* Closed, not yet gone: every call is still safe and refused. */
    CHECK_EQ(iop_stream_write(c->s, "x", 1), -EPIPE);
    iop_stream_close(c->s); /* a second close is a no-op */
    CHECK_EQ(c->closes, 0);
}

/* A write that ignored "full" (the queue just grows): on_drain is owed once
 * per run of "full" answers. */
static void note_full(struct conn *c, int rc)
{
    if (rc == 1 && c->fulls == c->drains)
        c->fulls++;
}

static void produce(struct conn *c)
{
    while (c->off < c->total) {
        size_t n = c->total - c->off < c->chunk ? c->total - c->off : c->chunk;
        fill(c->scratch, c->seed, c->off, n);
        int rc = iop_stream_write(c->s, c->scratch, n);
        if (rc != 0 && rc != 1)
            iop_test_fail(__FILE__, __LINE__, "iop_stream_write at %zu: %s", c->off,
                          iop_strerror(rc));
        c->off += n;
        if (rc == 1) {
            /* "full": the queue holds more than high_water, and since we stop
             * at the first "full", by at most this one write. */
            size_t q = iop_stream_queued(c->s);
            if (q <= c->high || q > c->high + n)
                iop_test_fail(__FILE__, __LINE__, "full with %zu queued (high %zu, write %zu)", q,
                              c->high, n);
            c->fulls++;
            return;
        }
    }
}

static void conn_read(iop_stream *s, ssize_t nread, const char *buf)
{
    struct conn *c = iop_stream_data(s);
    CHECK(c);
    CHECK_EQ(c->closes, 0);
    CHECK_EQ(c->errs, 0); /* nothing after an error */
    if (nread > 0) {
        CHECK(buf);
        if (c->eofs)
            c->data_after_eof++;
        c->reads++;
        if (c->act & ACT_KEEP) {
            CHECK(c->got + (size_t)nread <= c->keep_cap);
            memcpy(c->keep + c->got, buf, (size_t)nread);
        } else if (!(c->act & ACT_ECHO) || c->recv_seed) {
            verify(buf, c->recv_seed, c->got, (size_t)nread, "stream received");
        }
        c->got += (size_t)nread;
        if (c->act & ACT_ECHO) {
            int rc = iop_stream_write(s, buf, (size_t)nread);
            CHECK(rc == 0 || rc == 1);
            if (rc == 1) {
                c->fulls++;
                CHECK_OK(iop_stream_read_stop(s));
            }
        }
        if (c->act & ACT_CLOSE_DATA)
            conn_close_now(c);
    } else if (nread == 0) {
        c->eofs++;
        CHECK_EQ(c->eofs, 1); /* EOF is reported once */
        if (c->act & ACT_CLOSE_EOF)
            conn_close_now(c);
    } else {
        c->errs++;
        c->last_err = (int)nread;
        c->err_at = iop_test_now_ms();
        if (c->act & ACT_CLOSE_ERR)
            conn_close_now(c);
    }
}

static void conn_drain(iop_stream *s)
{
    struct conn *c = iop_stream_data(s);
    CHECK_EQ(c->closes, 0);
    c->drains++;
    CHECK(c->drains <= c->fulls); /* only after a "full" */
    size_t q = iop_stream_queued(s);
    if (q > c->low)
        iop_test_fail(__FILE__, __LINE__, "on_drain with %zu queued (low %zu)", q, c->low);
    if (c->act & ACT_CLOSE_DRAIN) {
        conn_close_now(c);
        return;
    }
    if (c->act & ACT_ECHO)
        CHECK_OK(iop_stream_read_start(s));
    if (c->scratch)
        produce(c);
}

static void conn_closed(iop_stream *s)
{
    struct conn *c = iop_stream_data(s);
    CHECK(!c->in_close);
    c->closes++;
    CHECK_EQ(c->closes, 1);
    c->closed_at = iop_test_now_ms();
    if (c->act & ACT_CLOSE_CLOSE)
        iop_stream_close(s); /* "a second call is a no-op", here too */
}

static struct iop_stream_config conn_config(void)
{
    struct iop_stream_config cfg = {
        .on_read = conn_read,
        .on_drain = conn_drain,
        .on_close = conn_closed,
    };
    return cfg;
}

static iop_stream_ctx *new_ctx(iop_loop *l, const struct iop_stream_config *cfg)
{
    iop_stream_ctx *ctx = NULL;
    CHECK_OK(iop_stream_ctx_new(l, cfg, &ctx));
    CHECK(ctx);
    CHECK(iop_stream_ctx_loop(ctx) == l);
    return ctx;
}

static void conn_open(iop_stream_ctx *ctx, const struct iop_stream_config *cfg, struct conn *c,
                      int fd)
{
    c->high = cfg->high_water ? cfg->high_water : MiB;
    c->low = cfg->low_water ? cfg->low_water : c->high / 4;
    CHECK_OK(iop_stream_open(ctx, fd, &c->s));
    CHECK(c->s);
    iop_stream_set_data(c->s, c);
    CHECK(iop_stream_data(c->s) == c);
    CHECK_EQ(iop_stream_fd(c->s), fd);
    CHECK(iop_stream_loop(c->s) == iop_stream_ctx_loop(ctx));
}

/* Give conn a pattern to produce (chunk bytes per write). */
static void conn_produce(struct conn *c, unsigned seed, size_t total, size_t chunk)
{
    c->seed = seed;
    c->total = total;
    c->chunk = chunk;
    c->off = 0;
    c->scratch = malloc(chunk);
    CHECK(c->scratch);
    produce(c);
}

/* Close (if it is not closed yet), wait for on_close, free the context. */
static void conn_finish(iop_loop *l, iop_stream_ctx *ctx, struct conn *c)
{
    if (!c->closes && !c->in_close) {
        iop_stream_close(c->s);
        CHECK_EQ(c->closes, 0);
    }
    WAIT_FOR(l, c->closes == 1, 5000);
    CHECK_EQ(iop_stream_ctx_count(ctx), 0);
    CHECK_OK(iop_stream_ctx_free(ctx));
    free(c->scratch);
    c->scratch = NULL;
}

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

/* ---- 1 MiB through odd chunk sizes ------------------------------------- */

static const size_t odd_chunks[] = {1, 7, 4093, 65537, MiB};

/* Stream writes (chunk a call, respecting "full"/on_drain), the peer reads
 * (another odd size a call), every byte checked. */
IOP_TEST_BOTH(chunks_stream_to_peer)
{
    static const size_t peer_reads[] = {65536, 4093, 7, 1000, 65537};
    iop_loop *l = iop_test_loop(be);
    for (size_t i = 0; i < sizeof odd_chunks / sizeof odd_chunks[0]; i++) {
        struct iop_stream_config cfg = conn_config();
        iop_stream_ctx *ctx = new_ctx(l, &cfg);
        int sv[2];
        make_pair(kind, sv);
        struct conn c = {0};
        conn_open(ctx, &cfg, &c, sv[0]);
        struct peer p = {.reading = 1, .recv_seed = 11 + (unsigned)i, .recv_chunk = peer_reads[i]};
        peer_start(l, &p, sv[1]);
        conn_produce(&c, 11 + (unsigned)i, MiB, odd_chunks[i]);
        WAIT_FOR(l, p.got == MiB || p.eof || p.err, 30000);
        CHECK_EQ(p.got, MiB);
        CHECK_EQ(c.off, MiB);
        WAIT_FOR(l, iop_stream_queued(c.s) == 0 && c.drains == c.fulls, 5000);
        /* Then a clean end: shutdown -> EOF at exactly 1 MiB. */
        CHECK_OK(iop_stream_shutdown(c.s));
        WAIT_FOR(l, p.eof || p.err, 5000);
        CHECK_EQ(p.err, 0);
        CHECK_EQ(p.got, MiB);
        conn_finish(l, ctx, &c);
        peer_stop(&p);
        close(sv[1]);
    }
    iop_test_loop_free(l);
}

/* The peer writes chunk bytes a call; the stream reads with several
 * read_size settings; every byte checked, then EOF. */
IOP_TEST_BOTH(chunks_peer_to_stream)
{
    static const unsigned read_sizes[] = {0, 4093, 7, 0, 1000};
    iop_loop *l = iop_test_loop(be);
    for (size_t i = 0; i < sizeof odd_chunks / sizeof odd_chunks[0]; i++) {
        struct iop_stream_config cfg = conn_config();
        cfg.read_size = read_sizes[i];
        iop_stream_ctx *ctx = new_ctx(l, &cfg);
        int sv[2];
        make_pair(kind, sv);
        struct conn c = {.recv_seed = 21 + (unsigned)i};
        conn_open(ctx, &cfg, &c, sv[0]);
        CHECK_OK(iop_stream_read_start(c.s));
        struct peer p = {.send_total = MiB,
                         .send_chunk = odd_chunks[i],
                         .send_seed = 21 + (unsigned)i,
                         .shut_after = 1};
        peer_start(l, &p, sv[1]);
        WAIT_FOR(l, c.eofs || c.errs, 30000);
        CHECK_EQ(c.errs, 0);
        CHECK_EQ(c.got, MiB);
        CHECK(c.reads >= 1);
        conn_finish(l, ctx, &c);
        peer_stop(&p);
        close(sv[1]);
    }
    iop_test_loop_free(l);
}

/* An echo stream: 1 MiB in, 1 MiB out, byte-exact, with read_stop while the
 * write queue is full and read_start on drain. */
IOP_TEST_BOTH(echo_1mib)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    cfg.high_water = 64 * KiB;
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {.act = ACT_ECHO, .recv_seed = 31};
    conn_open(ctx, &cfg, &c, sv[0]);
    CHECK_OK(iop_stream_read_start(c.s));
    struct peer p = {.send_total = MiB,
                     .send_chunk = 65537,
                     .send_seed = 31,
                     .reading = 1,
                     .recv_seed = 31,
                     .recv_chunk = 4093};
    peer_start(l, &p, sv[1]);
    WAIT_FOR(l, p.got == MiB || p.eof || p.err, 30000);
    CHECK_EQ(p.got, MiB);
    CHECK_EQ(c.got, MiB);
    CHECK_EQ(c.drains, c.fulls);
    /* The peer half-closes; the echo side closes on EOF. */
    CHECK(shutdown(sv[1], SHUT_WR) == 0);
    WAIT_FOR(l, c.eofs == 1, 5000);
    conn_finish(l, ctx, &c);
    WAIT_FOR(l, p.eof, 5000);
    CHECK_EQ(p.got, MiB);
    peer_stop(&p);
    close(sv[1]);
    iop_test_loop_free(l);
}

/* ---- ordering and coalescing ------------------------------------------ */

#define RECORDS 20000

struct ordered {
    struct conn c;
    unsigned char *expect;
    size_t expect_len;
    int wrote;
};

/* Inside one callback: thousands of small writes and writevs, some empty,
 * then shutdown.  They must arrive in order, once each. */
static void ordered_read(iop_stream *s, ssize_t nread, const char *buf)
{
    struct ordered *o = iop_stream_data(s);
    (void)buf;
    if (nread <= 0 || o->wrote)
        return;
    o->wrote = 1;
    size_t off = 0;
    for (int i = 0; i < RECORDS; i++) {
        char rec[32];
        int n = snprintf(rec, sizeof rec, "r%d;", i);
        int rc;
        if (i % 3 == 0) {
            /* writev, split mid-record, with an empty element */
            struct iovec iov[3] = {
                {.iov_base = rec, .iov_len = 1},
                {.iov_base = rec + 1, .iov_len = 0},
                {.iov_base = rec + 1, .iov_len = (size_t)n - 1},
            };
            rc = iop_stream_writev(s, iov, 3);
        } else {
            rc = iop_stream_write(s, rec, (size_t)n);
        }
        CHECK(rc == 0 || rc == 1);
        note_full(&o->c, rc);
        if (i % 1000 == 0)
            CHECK(iop_stream_write(s, rec, 0) >= 0); /* empty: harmless */
        memcpy(o->expect + off, rec, (size_t)n);
        off += (size_t)n;
    }
    o->expect_len = off;
    CHECK(iop_stream_queued(s) <= off);
    CHECK_OK(iop_stream_shutdown(s));
    CHECK_EQ(iop_stream_write(s, "late", 4), -EPIPE);
}

IOP_TEST_BOTH(writes_in_order)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    cfg.on_read = ordered_read;
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct ordered o = {0};
    o.expect = malloc(RECORDS * 16);
    CHECK(o.expect);
    conn_open(ctx, &cfg, &o.c, sv[0]);
    iop_stream_set_data(o.c.s, &o); /* o.c is the first member */
    CHECK_OK(iop_stream_read_start(o.c.s));
    unsigned char *got = malloc(RECORDS * 16);
    CHECK(got);
    struct peer p = {.reading = 1, .keep = got, .keep_cap = RECORDS * 16, .recv_chunk = 4093};
    peer_start(l, &p, sv[1]);
    CHECK_EQ(send(sv[1], "go", 2, MSG_NOSIGNAL), 2);
    WAIT_FOR(l, p.eof || p.err, 10000);
    CHECK_EQ(p.err, 0);
    CHECK(o.wrote);
    CHECK_EQ(p.got, o.expect_len);
    CHECK(memcmp(got, o.expect, o.expect_len) == 0);
    conn_finish(l, ctx, &o.c);
    peer_stop(&p);
    close(sv[1]);
    free(got);
    free(o.expect);
    iop_test_loop_free(l);
}

/* writev of many pieces from outside a callback, byte-exact. */
IOP_TEST_BOTH(writev_pieces)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    enum { PIECES = 64 };
    size_t total = 0, sizes[PIECES];
    for (int i = 0; i < PIECES; i++) {
        sizes[i] = (size_t)(i * 997 % 5003) + (i % 5 == 0 ? 0 : 1);
        total += sizes[i];
    }
    unsigned char *all = malloc(total * 3);
    CHECK(all);
    fill(all, 41, 0, total * 3);
    /* Three calls, each the same layout of pieces over the next third. */
    for (int round = 0; round < 3; round++) {
        struct iovec iov[PIECES];
        size_t off = total * (size_t)round;
        for (int i = 0; i < PIECES; i++) {
            iov[i].iov_base = all + off;
            iov[i].iov_len = sizes[i];
            off += sizes[i];
        }
        int rc = iop_stream_writev(c.s, iov, PIECES);
        CHECK(rc == 0 || rc == 1);
        note_full(&c, rc);
    }
    memset(all, 0, total * 3); /* copied: the caller's buffer is free again */
    CHECK_OK(iop_stream_shutdown(c.s));
    struct peer p = {.reading = 1, .recv_seed = 41, .recv_chunk = 777};
    peer_start(l, &p, sv[1]);
    WAIT_FOR(l, p.eof || p.err, 10000);
    CHECK_EQ(p.err, 0);
    CHECK_EQ(p.got, total * 3);
    conn_finish(l, ctx, &c);
    peer_stop(&p);
    close(sv[1]);
    free(all);
    iop_test_loop_free(l);
}

/* ---- half-close -------------------------------------------------------- */

/* The peer shuts down its write side: on_read gets the bytes, then 0, once;
 * the stream can still write afterwards (1 MiB, byte-exact), then shut down. */
IOP_TEST_BOTH(peer_half_close)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {.recv_seed = 51};
    conn_open(ctx, &cfg, &c, sv[0]);
    CHECK_OK(iop_stream_read_start(c.s));
    struct peer p = {
        .send_total = 1000, .send_seed = 51, .shut_after = 1, .reading = 1, .recv_seed = 52};
    peer_start(l, &p, sv[1]);
    WAIT_FOR(l, c.eofs || c.errs, 5000);
    CHECK_EQ(c.errs, 0);
    CHECK_EQ(c.got, 1000);
    settle(l, 20);
    CHECK_EQ(c.eofs, 1);
    CHECK_EQ(c.data_after_eof, 0);

    /* Writing goes on after EOF. */
    conn_produce(&c, 52, MiB, 65537);
    WAIT_FOR(l, p.got == MiB || p.eof || p.err, 10000);
    CHECK_EQ(p.got, MiB);
    WAIT_FOR(l, c.off == MiB && c.drains == c.fulls, 5000);
    CHECK_OK(iop_stream_shutdown(c.s));
    WAIT_FOR(l, p.eof || p.err, 5000);
    CHECK_EQ(p.err, 0);
    CHECK_EQ(c.errs, 0);
    conn_finish(l, ctx, &c);
    peer_stop(&p);
    close(sv[1]);
    iop_test_loop_free(l);
}

/* iop_stream_shutdown with MiBs queued: the FIN waits for the queue, the peer
 * reads every byte and then EOF; reading on the stream goes on. */
IOP_TEST_BOTH(shutdown_waits_for_queue)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {.recv_seed = 62};
    conn_open(ctx, &cfg, &c, sv[0]);
    CHECK_OK(iop_stream_read_start(c.s));
    /* Queue 8 MiB ignoring "full" (allowed: the queue just grows), far more
     * than the socket buffers hold, then shut down at once. */
    size_t total = 8 * MiB, chunk = 65536;
    unsigned char *buf = malloc(chunk);
    CHECK(buf);
    for (size_t off = 0; off < total; off += chunk) {
        fill(buf, 61, off, chunk);
        int rc = iop_stream_write(c.s, buf, chunk);
        CHECK(rc == 0 || rc == 1);
        note_full(&c, rc);
    }
    free(buf);
    CHECK(iop_stream_queued(c.s) > 0);
    CHECK_OK(iop_stream_shutdown(c.s));
    CHECK_EQ(iop_stream_write(c.s, "x", 1), -EPIPE);
    struct iovec iov = {.iov_base = "x", .iov_len = 1};
    CHECK_EQ(iop_stream_writev(c.s, &iov, 1), -EPIPE);

    struct peer p = {.reading = 1, .recv_seed = 61, .recv_chunk = 65537};
    peer_start(l, &p, sv[1]);
    WAIT_FOR(l, p.eof || p.err, 20000);
    CHECK_EQ(p.err, 0);
    CHECK_EQ(p.got, total);
    CHECK_EQ(iop_stream_queued(c.s), 0);

    /* Reading still works after our shutdown. */
    p.send_total = 5000;
    p.send_seed = 62;
    p.shut_after = 1;
    peer_update(&p);
    WAIT_FOR(l, c.eofs || c.errs, 5000);
    CHECK_EQ(c.errs, 0);
    CHECK_EQ(c.got, 5000);
    conn_finish(l, ctx, &c);
    peer_stop(&p);
    close(sv[1]);
    iop_test_loop_free(l);
}

/* ---- RST and vanished peers ------------------------------------------- */

/* The peer resets the connection: on_read(-ECONNRESET), once; the stream,
 * not closed by the callback, closes itself and on_close follows. */
IOP_TEST(rst_econnreset, be)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(PAIR_TCP, sv);
    struct conn c = {.recv_seed = 71};
    conn_open(ctx, &cfg, &c, sv[0]);
    CHECK_OK(iop_stream_read_start(c.s));
    unsigned char hello[100];
    fill(hello, 71, 0, sizeof hello);
    CHECK_EQ(send(sv[1], hello, sizeof hello, MSG_NOSIGNAL), 100);
    WAIT_FOR(l, c.got == 100, 5000);
    close_rst(sv[1]);
    WAIT_FOR(l, c.errs || c.eofs, 5000);
    CHECK_EQ(c.eofs, 0);
    CHECK_EQ(c.last_err, -ECONNRESET);
    WAIT_FOR(l, c.closes == 1, 5000);
    settle(l, 20);
    CHECK_EQ(c.errs, 1);
    CHECK_EQ(c.closes, 1);
    CHECK_EQ(iop_stream_ctx_count(ctx), 0);
    CHECK_OK(iop_stream_ctx_free(ctx));
    iop_test_loop_free(l);
}

/* RST while MiBs are queued for a peer that does not read: an error (not a
 * hang), the stream closes itself, the queue is freed. */
IOP_TEST(rst_mid_write, be)
{
    signal(SIGPIPE, SIG_DFL);
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(PAIR_TCP, sv);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    CHECK_OK(iop_stream_read_start(c.s));
    unsigned char *buf = malloc(MiB);
    CHECK(buf);
    fill(buf, 72, 0, MiB);
    for (int i = 0; i < 8; i++) {
        int rc = iop_stream_write(c.s, buf, MiB);
        CHECK(rc == 0 || rc == 1);
        note_full(&c, rc);
    }
    free(buf);
    settle(l, 30); /* let the kernel buffers fill */
    CHECK(iop_stream_queued(c.s) > 0);
    close_rst(sv[1]);
    WAIT_FOR(l, c.errs, 5000);
    CHECK(c.last_err == -ECONNRESET || c.last_err == -EPIPE);
    WAIT_FOR(l, c.closes == 1, 5000);
    CHECK_EQ(iop_stream_ctx_count(ctx), 0);
    CHECK_OK(iop_stream_ctx_free(ctx));
    iop_test_loop_free(l);
}

/* The peer closed; writing on gives an error through on_read, never
 * SIGPIPE (its default action is restored to prove it). */
IOP_TEST_BOTH(write_to_vanished_peer)
{
    signal(SIGPIPE, SIG_DFL);
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    CHECK_OK(iop_stream_read_start(c.s));
    close(sv[1]);
    WAIT_FOR(l, c.eofs, 5000);
    unsigned char *buf = calloc(1, 64 * KiB);
    CHECK(buf);
    for (int i = 0; i < 200 && !c.errs; i++) {
        int rc = iop_stream_write(c.s, buf, 64 * KiB);
        CHECK(rc == 0 || rc == 1 || rc == -EPIPE);
        note_full(&c, rc);
        CHECK(iop_loop_run(l, IOP_RUN_NOWAIT) >= 0);
        usleep(500);
    }
    free(buf);
    WAIT_FOR(l, c.errs, 2000);
    CHECK(c.last_err == -EPIPE || c.last_err == -ECONNRESET);
    if (!c.closes)
        CHECK_EQ(iop_stream_write(c.s, "x", 1), -EPIPE); /* failed stream */
    WAIT_FOR(l, c.closes == 1, 5000);
    CHECK_EQ(c.errs, 1);
    CHECK_OK(iop_stream_ctx_free(ctx));
    iop_test_loop_free(l);
}

/* ---- sendfile ---------------------------------------------------------- */

#define FILE_SIZE (4 * MiB + 13)

/* A pattern file (seed 81) in /tmp, already unlinked. */
static int make_file(void)
{
    char path[] = "/tmp/ioplex-test-stream-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK(unlink(path) == 0);
    CHECK(fcntl(fd, F_SETFD, FD_CLOEXEC) == 0);
    unsigned char *buf = malloc(FILE_SIZE);
    CHECK(buf);
    fill(buf, 81, 0, FILE_SIZE);
    size_t off = 0;
    while (off < FILE_SIZE) {
        ssize_t n = pwrite(fd, buf + off, FILE_SIZE - off, (off_t)off);
        CHECK(n > 0);
        off += (size_t)n;
    }
    free(buf);
    return fd;
}

static int fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

/* Shrink the kernel buffers of a pair (stream side sv[0], peer sv[1]). */
static void small_bufs(int sv[2], int size)
{
    CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof size) == 0);
    CHECK(setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &size, sizeof size) == 0);
}

/* A peer on fd that keeps up to total bytes in got, read 65537 at a time. */
static void peer_keep(iop_loop *l, struct peer *p, int fd, unsigned char *got, size_t total)
{
    *p = (struct peer){.reading = 1, .keep = got, .keep_cap = total, .recv_chunk = 65537};
    peer_start(l, p, fd);
}

/* The peer read to EOF and got exactly expect[0, total). */
static void expect_got(iop_loop *l, struct peer *p, const unsigned char *got,
                       const unsigned char *expect, size_t total)
{
    WAIT_FOR(l, p->eof || p->err, 20000);
    CHECK_EQ(p->err, 0);
    CHECK_EQ(p->got, total);
    for (size_t i = 0; i < total; i++)
        if (got[i] != expect[i]) {
            iop_test_fail(__FILE__, __LINE__, "byte %zu is 0x%02x, expected 0x%02x", i, got[i],
                          expect[i]);
            return;
        }
}

/* End a one-stream case: the stream, the peer, the pair's far end (far),
 * and the two buffers. */
static void pair_case_end(iop_loop *l, iop_stream_ctx *ctx, struct conn *c, struct peer *p, int far,
                          unsigned char *expect, unsigned char *got)
{
    conn_finish(l, ctx, c);
    peer_stop(p);
    close(far);
    free(expect);
    free(got);
}

/* Expected bytes: header (seed 82), then file[off, off+len), then trailer
 * (seed 83); sent as write, sendfile, write, shutdown.  With IOP_SENDFILE_DUP
 * in flags, header and file go in one iop_stream_sendfilev and file_fd is
 * closed right after the call, as a file cache may.  bufs: kernel buffer
 * size of the pair, 0 for the default. */
static void sendfile_case(iop_loop *l, enum pair_kind kind, int file_fd, off_t off, size_t len,
                          unsigned flags, int bufs)
{
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    if (bufs)
        small_bufs(sv, bufs);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    unsigned char header[1000], trailer[4093];
    fill(header, 82, 0, sizeof header);
    fill(trailer, 83, 0, sizeof trailer);
    size_t total = sizeof header + len + sizeof trailer;
    unsigned char *expect = malloc(total), *got = malloc(total);
    CHECK(expect && got);
    memcpy(expect, header, sizeof header);
    fill(expect + sizeof header, 81, (size_t)off, len);
    memcpy(expect + sizeof header + len, trailer, sizeof trailer);

    int rc;
    if (flags & IOP_SENDFILE_DUP) {
        struct iovec h = {header, sizeof header};
        rc = iop_stream_sendfilev(c.s, &h, 1, file_fd, off, len, flags);
        close(file_fd);
    } else {
        CHECK(iop_stream_write(c.s, header, sizeof header) >= 0);
        rc = iop_stream_sendfile(c.s, file_fd, off, len, flags);
    }
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    CHECK(iop_stream_queued(c.s) <= sizeof header + len);
    rc = iop_stream_write(c.s, trailer, sizeof trailer);
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    CHECK(iop_stream_queued(c.s) <= total);
    CHECK_OK(iop_stream_shutdown(c.s));
    /* The file is only read when sent: the peer starts late, so the stream
     * must wait for room more than once. */
    settle(l, 10);
    struct peer p;
    peer_keep(l, &p, sv[1], got, total);
    expect_got(l, &p, got, expect, total);
    CHECK_EQ(iop_stream_queued(c.s), 0);
    CHECK_EQ(c.errs, 0);
    pair_case_end(l, ctx, &c, &p, sv[1], expect, got);
}

IOP_TEST_BOTH(sendfile_between_writes)
{
    iop_loop *l = iop_test_loop(be);
    int fd = make_file();
    /* The whole file, kept open by us. */
    sendfile_case(l, kind, fd, 0, FILE_SIZE, 0, 0);
    CHECK(fd_is_open(fd));
    /* The middle part, with odd bounds. */
    sendfile_case(l, kind, fd, 4093, 2 * MiB + 1, 0, 0);
    /* The middle part again on a dup that the stream closes when done. */
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    CHECK(dup_fd >= 0);
    sendfile_case(l, kind, dup_fd, 65537, MiB + 7, IOP_SENDFILE_CLOSE, 0);
    CHECK(!fd_is_open(dup_fd));
    /* The file's own position was never used (pwrite left it at 0). */
    CHECK_EQ(lseek(fd, 0, SEEK_CUR), 0);
    close(fd);
    iop_test_loop_free(l);
}

/* iop_stream_sendfilev with IOP_SENDFILE_DUP: the caller's fd is closed at
 * once, yet the range still arrives whole, large (queued on a dup) or
 * small (sent within the call). */
IOP_TEST_BOTH(sendfilev_dup)
{
    iop_loop *l = iop_test_loop(be);
    int fd = make_file();
    int d1 = fcntl(fd, F_DUPFD_CLOEXEC, 0), d2 = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    CHECK(d1 >= 0 && d2 >= 0);
    sendfile_case(l, kind, d1, 4093, 2 * MiB + 1, IOP_SENDFILE_DUP, 0);
    sendfile_case(l, kind, d2, 13, 13, IOP_SENDFILE_DUP, 0);
    close(fd);
    iop_test_loop_free(l);
}

/* ---- out of descriptors: all of a call, or none of it ------------------- */

/* Lower the soft RLIMIT_NOFILE to the lowest free descriptor, so that none
 * can be made (fd: any open one); returns the limit to restore. */
static rlim_t nofile_exhaust(int fd)
{
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    int lowest = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    CHECK(lowest >= 0);
    close(lowest);
    rlim_t old = rl.rlim_cur;
    rl.rlim_cur = (rlim_t)lowest;
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
    CHECK(fcntl(fd, F_DUPFD_CLOEXEC, 0) < 0 && errno == EMFILE);
    return old;
}

static void nofile_restore(rlim_t cur)
{
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    rl.rlim_cur = cur;
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
}

/* A response (header + the whole file, IOP_SENDFILE_DUP) larger than the
 * socket takes, at EMFILE.  Without a descriptor to keep the file on, the
 * call must fail having sent nothing: not the head and part of the body,
 * which a client would read as a response cut short.  A spare descriptor
 * made by an earlier call carries the next one whole (on the spare's
 * number); the call after that fails again, queueing none of itself.  The
 * stream goes on each time: the peer gets exactly the two that went. */
IOP_TEST_BOTH(sendfilev_out_of_fds)
{
    iop_loop *l = iop_test_loop(be);
    int fd = make_file();
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    small_bufs(sv, 16 * 1024);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    unsigned char header[1000];
    fill(header, 82, 0, sizeof header);
    struct iovec h = {header, sizeof header};
    size_t one = sizeof header + FILE_SIZE, total = 2 * one;
    unsigned char *expect = malloc(total), *got = malloc(total);
    CHECK(expect && got);
    for (size_t at = 0; at < total; at += one) {
        memcpy(expect + at, header, sizeof header);
        fill(expect + at + sizeof header, 81, 0, FILE_SIZE);
    }
    struct peer p;
    peer_keep(l, &p, sv[1], got, total);

    rlim_t cur = nofile_exhaust(fd);
    CHECK_EQ(iop_stream_sendfilev(c.s, &h, 1, fd, 0, FILE_SIZE, IOP_SENDFILE_DUP), -EMFILE);
    CHECK_EQ(iop_stream_queued(c.s), 0);
    nofile_restore(cur);
    settle(l, 20);
    CHECK_EQ(p.got, 0);

    int rc = iop_stream_sendfilev(c.s, &h, 1, fd, 0, FILE_SIZE, IOP_SENDFILE_DUP);
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    WAIT_FOR(l, iop_stream_queued(c.s) == 0, 20000);

    cur = nofile_exhaust(fd);
    rc = iop_stream_sendfilev(c.s, &h, 1, fd, 0, FILE_SIZE, IOP_SENDFILE_DUP);
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    size_t queued = iop_stream_queued(c.s);
    CHECK(queued > 0); /* the socket was full: the file is kept on the spare */
    CHECK_EQ(iop_stream_sendfilev(c.s, &h, 1, fd, 0, FILE_SIZE, IOP_SENDFILE_DUP), -EMFILE);
    CHECK_EQ(iop_stream_queued(c.s), queued);
    nofile_restore(cur);

    CHECK_OK(iop_stream_shutdown(c.s));
    expect_got(l, &p, got, expect, total);
    CHECK_EQ(c.errs, 0);
    pair_case_end(l, ctx, &c, &p, sv[1], expect, got);
    close(fd);
    iop_test_loop_free(l);
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif

/* Out of memory: a write the queue could not take must not have sent part
 * of itself first.  RLIMIT_AS just above what the process maps makes the
 * queue's allocation for a 64 MiB write fail: -ENOMEM, nothing sent, and
 * the stream goes on.  (Sanitizers map shadow memory: skipped there.) */
IOP_TEST_BOTH(write_out_of_memory)
{
#ifdef UNDER_SANITIZER
    (void)be;
    (void)kind;
    IOP_SKIP("RLIMIT_AS and a sanitizer's shadow memory");
#else
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    small_bufs(sv, 16 * 1024);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    size_t big = 64 * MiB, total = 1000;
    unsigned char *buf = malloc(big), *expect = malloc(total), *got = malloc(total);
    CHECK(buf && expect && got);
    fill(buf, 87, 0, big);
    fill(expect, 87, 0, total);
    struct peer p;
    peer_keep(l, &p, sv[1], got, total);
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    CHECK(f && fscanf(f, "%lu", &pages) == 1);
    fclose(f);
    struct rlimit rl, old;
    CHECK(getrlimit(RLIMIT_AS, &old) == 0);
    rl = old;
    rl.rlim_cur = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + 8 * MiB;
    CHECK(setrlimit(RLIMIT_AS, &rl) == 0);
    int rc = iop_stream_write(c.s, buf, big);
    CHECK(setrlimit(RLIMIT_AS, &old) == 0);
    CHECK_EQ(rc, -ENOMEM);
    CHECK_EQ(iop_stream_queued(c.s), 0);
    settle(l, 20);
    CHECK_EQ(p.got, 0);
    rc = iop_stream_write(c.s, buf, total);
    CHECK(rc == 0 || rc == 1);
    CHECK_OK(iop_stream_shutdown(c.s));
    expect_got(l, &p, got, expect, total);
    CHECK_EQ(c.errs, 0);
    pair_case_end(l, ctx, &c, &p, sv[1], expect, got);
    free(buf);
    iop_test_loop_free(l);
#endif
}

/* Small kernel buffers: the range waits for room again and again (on
 * io_uring, a poll request each time) and resumes where it stopped; both the
 * range sent at once and the one queued behind a write. */
IOP_TEST_BOTH(sendfile_small_buffers)
{
    iop_loop *l = iop_test_loop(be);
    int fd = make_file();
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    CHECK(d >= 0);
    sendfile_case(l, kind, d, 7, 3 * MiB, IOP_SENDFILE_DUP, 16 * 1024);
    sendfile_case(l, kind, fd, 65537, 2 * MiB + 3, 0, 16 * 1024);
    close(fd);
    iop_test_loop_free(l);
}

/* A file shorter than the range promised: the bytes it has arrive, then
 * sendfile(2) says 0 and the stream fails with -EIO (and, left open by the
 * user, closes).  queued: behind a write, so the engine sends it, after
 * waiting for room; else at once from the call. */
static void short_file_case(iop_loop *l, enum pair_kind kind, int file_fd, off_t off, int queued)
{
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    unsigned char header[1000];
    fill(header, 82, 0, sizeof header);
    size_t have = FILE_SIZE - (size_t)off, total = sizeof header + have;
    unsigned char *expect = malloc(total), *got = malloc(total);
    CHECK(expect && got);
    memcpy(expect, header, sizeof header);
    fill(expect + sizeof header, 81, (size_t)off, have);
    struct iovec h = {header, sizeof header};
    if (queued)
        CHECK(iop_stream_write(c.s, header, sizeof header) >= 0);
    int rc = iop_stream_sendfilev(c.s, &h, !queued, file_fd, off, have + 4096, 0);
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    settle(l, 10);
    struct peer p;
    peer_keep(l, &p, sv[1], got, total);
    WAIT_FOR(l, c.errs && c.closes, 20000);
    CHECK_EQ(c.last_err, -EIO);
    expect_got(l, &p, got, expect, total);
    pair_case_end(l, ctx, &c, &p, sv[1], expect, got);
}

IOP_TEST_BOTH(sendfile_short_file)
{
    iop_loop *l = iop_test_loop(be);
    int fd = make_file();
    short_file_case(l, kind, fd, FILE_SIZE - 5000, 0);
    short_file_case(l, kind, fd, 0, 1);
    close(fd);
    iop_test_loop_free(l);
}

/* Closing a stream with an unsent IOP_SENDFILE_CLOSE file closes the file
 * (the fd-leak check proves it), and frees what was queued. */
IOP_TEST_BOTH(sendfile_close_unsent)
{
    iop_loop *l = iop_test_loop(be);
    int fd = make_file();
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    CHECK(iop_stream_write(c.s, "header", 6) >= 0);
    int rc = iop_stream_sendfile(c.s, fd, 0, FILE_SIZE, IOP_SENDFILE_CLOSE);
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    int fd2 = make_file();
    rc = iop_stream_sendfile(c.s, fd2, 7, FILE_SIZE - 7, IOP_SENDFILE_CLOSE);
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    settle(l, 10); /* under way: some is in the socket buffer */
    conn_finish(l, ctx, &c);
    CHECK(!fd_is_open(fd2));
    close(sv[1]);
    iop_test_loop_free(l);
}

/* sendfile to a vanished peer: sendfile(2) and splice(2) cannot take
 * MSG_NOSIGNAL, yet SIGPIPE must not kill us. */
IOP_TEST_BOTH(sendfile_to_vanished_peer)
{
    signal(SIGPIPE, SIG_DFL);
    iop_loop *l = iop_test_loop(be);
    int fd = make_file();
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    CHECK_OK(iop_stream_read_start(c.s));
    close(sv[1]);
    WAIT_FOR(l, c.eofs, 5000);
    for (int i = 0; i < 200 && !c.errs; i++) {
        int rc = iop_stream_sendfile(c.s, fd, 0, 256 * KiB, 0);
        CHECK(rc == 0 || rc == 1 || rc == -EPIPE);
        note_full(&c, rc);
        CHECK(iop_loop_run(l, IOP_RUN_NOWAIT) >= 0);
        usleep(500);
    }
    WAIT_FOR(l, c.errs, 2000);
    CHECK(c.last_err == -EPIPE || c.last_err == -ECONNRESET);
    WAIT_FOR(l, c.closes == 1, 5000);
    CHECK_OK(iop_stream_ctx_free(ctx));
    close(fd);
    iop_test_loop_free(l);
}

/* ---- backpressure ------------------------------------------------------ */

/* The peer does not read: write until "full", the queue stays within
 * high_water + one write, no on_drain while nothing moves; then the peer
 * reads: on_drain at or below low_water, once per "full"; every byte
 * arrives. */
IOP_TEST_BOTH(backpressure)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    cfg.high_water = 64 * KiB;
    cfg.low_water = 16 * KiB;
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    /* Small kernel buffers, so that "full" comes soon and often. */
    int sz = 64 * 1024;
    CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz) == 0);
    CHECK(setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz) == 0);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    struct peer p = {.recv_seed = 91, .recv_chunk = 4093};
    peer_start(l, &p, sv[1]); /* not reading yet */

    /* Write until "full".  Then let the loop run: on uring the kernel only
     * now takes its share, so on_drain may come and produce more (that is
     * legitimate); it settles once the kernel buffers are full too. */
    conn_produce(&c, 91, 64 * MiB, 4093);
    CHECK_EQ(c.fulls, 1);
    settle(l, 100);
    int drains = c.drains;
    size_t q = iop_stream_queued(c.s);
    settle(l, 50);
    CHECK_EQ(c.drains, drains); /* nothing moves, nothing drains */
    CHECK_EQ(iop_stream_queued(c.s), q);
    CHECK_EQ(c.fulls, c.drains + 1);
    CHECK(q > c.low);
    CHECK(q <= c.high + c.chunk);
    CHECK(c.off < 64 * MiB);

    /* Now read; produce 4 MiB more than the first "full" needed, respecting
     * "full"/on_drain from here on (conn_drain calls produce). */
    c.total = c.off + 4 * MiB;
    p.reading = 1;
    peer_update(&p);
    WAIT_FOR(l, p.got == c.total || p.err || p.eof, 30000);
    CHECK_EQ(p.got, c.total);
    WAIT_FOR(l, c.drains == c.fulls, 5000);
    CHECK(c.fulls >= 2);
    conn_finish(l, ctx, &c);
    peer_stop(&p);
    close(sv[1]);
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

/* ---- writev_ref ---------------------------------------------------------- */

struct lent {
    int released; /* release calls */
};

static void lent_release(void *arg)
{
    ((struct lent *)arg)->released++;
}

/* Header (seed 84, copied), a lent buffer (seed 85, len bytes), flen
 * bytes of the pattern file (seed 81) if flen, trailer (seed 86): the lent
 * bytes must stay untouched until release, which comes once, and arrive
 * exact, also when a file follows them in the queue.  The buffer is
 * scribbled over after release to catch a stream that reads it late. */
static void ref_case(iop_loop *l, enum pair_kind kind, size_t len, size_t flen)
{
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    unsigned char header[777], trailer[1000];
    fill(header, 84, 0, sizeof header);
    fill(trailer, 86, 0, sizeof trailer);
    unsigned char *lentbuf = malloc(len + 1);
    size_t total = sizeof header + len + flen + sizeof trailer;
    unsigned char *expect = malloc(total), *got = malloc(total);
    CHECK(lentbuf && expect && got);
    fill(lentbuf, 85, 0, len);
    memcpy(expect, header, sizeof header);
    memcpy(expect + sizeof header, lentbuf, len);
    fill(expect + sizeof header + len, 81, 0, flen);
    memcpy(expect + sizeof header + len + flen, trailer, sizeof trailer);

    struct lent lt = {0};
    struct iovec h = {header, sizeof header};
    int rc = iop_stream_writev_ref(c.s, &h, 1, lentbuf, len, lent_release, &lt);
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    memset(header, 0, sizeof header); /* the header was copied if queued */
    if (flen) {
        int fd = make_file();
        rc = iop_stream_sendfile(c.s, fd, 0, flen, IOP_SENDFILE_DUP);
        close(fd);
        CHECK(rc == 0 || rc == 1);
        note_full(&c, rc);
    }
    rc = iop_stream_write(c.s, trailer, sizeof trailer);
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    CHECK_OK(iop_stream_shutdown(c.s));
    settle(l, 10);
    CHECK(lt.released <= 1);
    struct peer p;
    peer_keep(l, &p, sv[1], got, total);
    WAIT_FOR(l, lt.released, 20000);
    memset(lentbuf, 0xee, len);
    expect_got(l, &p, got, expect, total);
    CHECK_EQ(lt.released, 1);
    CHECK_EQ(c.errs, 0);
    pair_case_end(l, ctx, &c, &p, sv[1], expect, got);
    CHECK_EQ(lt.released, 1);
    free(lentbuf);
}

/* Small (sent within the call on readiness), large (queued behind a full
 * socket, the peer late), empty (released at once), and followed by a
 * file. */
IOP_TEST_BOTH(writev_ref_exact)
{
    iop_loop *l = iop_test_loop(be);
    ref_case(l, kind, 13, 0);
    ref_case(l, kind, 3 * MiB + 5, 0);
    ref_case(l, kind, 0, 0);
    /* Lent bytes queued before a file: they go with it. */
    ref_case(l, kind, 13, 4093);
    ref_case(l, kind, MiB + 3, 2 * MiB + 1);
    iop_test_loop_free(l);
}

/* Closing with lent bytes unsent releases them once; after shutdown the
 * call is refused and releases at once. */
IOP_TEST_BOTH(writev_ref_close_unsent)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    size_t len = 8 * MiB;
    char *buf = calloc(1, len);
    CHECK(buf);
    struct lent a = {0}, b = {0};
    int rc = iop_stream_writev_ref(c.s, NULL, 0, buf, len, lent_release, &a);
    CHECK(rc == 0 || rc == 1);
    note_full(&c, rc);
    settle(l, 10); /* under way: some is in the socket buffer */
    CHECK_EQ(a.released, 0);
    CHECK_OK(iop_stream_shutdown(c.s));
    CHECK_EQ(iop_stream_writev_ref(c.s, NULL, 0, buf, 10, lent_release, &b), -EPIPE);
    CHECK_EQ(b.released, 1);
    conn_finish(l, ctx, &c);
    CHECK_EQ(a.released, 1);
    close(sv[1]);
    free(buf);
    iop_test_loop_free(l);
}

/* After iop_stream_shutdown: write, writev and sendfile are refused. */
IOP_TEST(write_after_shutdown, be)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(PAIR_UNIX, sv);
    struct conn c = {0};
    conn_open(ctx, &cfg, &c, sv[0]);
    CHECK(iop_stream_write(c.s, "abc", 3) >= 0);
    CHECK_OK(iop_stream_shutdown(c.s));
    CHECK_EQ(iop_stream_write(c.s, "x", 1), -EPIPE);
    struct iovec iov = {.iov_base = "x", .iov_len = 1};
    CHECK_EQ(iop_stream_writev(c.s, &iov, 1), -EPIPE);
    int fd = make_file();
    CHECK_EQ(iop_stream_sendfile(c.s, fd, 0, 10, 0), -EPIPE);
    close(fd);
    char buf[8];
    struct pollfd pfd = {.fd = sv[1], .events = POLLIN};
    WAIT_FOR(l, poll(&pfd, 1, 0) == 1, 2000);
    CHECK_EQ(read(sv[1], buf, sizeof buf), 3);
    WAIT_FOR(l, poll(&pfd, 1, 0) == 1, 2000);
    CHECK_EQ(read(sv[1], buf, sizeof buf), 0);
    conn_finish(l, ctx, &c);
    close(sv[1]);
    iop_test_loop_free(l);
}

/* ---- read_stop --------------------------------------------------------- */

struct stopper {
    struct conn c;
    iop_timer restart;
    int stopped;
    int stops;
};

static void stopper_read(iop_stream *s, ssize_t nread, const char *buf)
{
    struct stopper *st = iop_stream_data(s);
    CHECK(!st->stopped); /* nothing while stopped */
    conn_read(s, nread, buf);
    if (nread > 0) {
        CHECK_OK(iop_stream_read_stop(s));
        st->stopped = 1;
        st->stops++;
        /* Restart soon, from outside any stream callback. */
        CHECK_OK(iop_timer_start(iop_stream_loop(s), &st->restart, st->stops % 16 ? 0 : 15, 0));
    }
}

static void stopper_restart_cb(iop_timer *t)
{
    struct stopper *st = t->data;
    st->stopped = 0;
    CHECK_OK(iop_stream_read_start(st->c.s));
}

/* read_stop inside on_read: no further on_read until read_start; nothing is
 * lost (edge and uring must deliver what arrived meanwhile without a new
 * event). */
IOP_TEST_BOTH(read_stop_in_read)
{
    iop_loop *l = iop_test_loop(be);
    struct iop_stream_config cfg = conn_config();
    cfg.on_read = stopper_read;
    cfg.read_size = 1000;
    iop_stream_ctx *ctx = new_ctx(l, &cfg);
    int sv[2];
    make_pair(kind, sv);
    struct stopper st = {.c = {.recv_seed = 111}};
    iop_timer_init(&st.restart, stopper_restart_cb);
    st.restart.data = &st;
    conn_open(ctx, &cfg, &st.c, sv[0]);
    iop_stream_set_data(st.c.s, &st); /* st.c is the first member */
    CHECK_OK(iop_stream_read_start(st.c.s));
    size_t total = 256 * KiB;
    struct peer p = {.send_total = total, .send_seed = 111, .send_chunk = 65536, .shut_after = 1};
    peer_start(l, &p, sv[1]);
    WAIT_FOR(l, st.stops >= 3 && st.stopped && p.sent == total, 5000);
    /* Stopped, with bytes waiting: nothing comes for a while. */
    iop_timer_stop(&st.restart);
    int reads = st.c.reads;
    settle(l, 50);
    CHECK_EQ(st.c.reads, reads);
    stopper_restart_cb(&st.restart);
    WAIT_FOR(l, st.c.eofs || st.c.errs, 20000);
    CHECK_EQ(st.c.errs, 0);
    CHECK_EQ(st.c.got, total);
    CHECK(st.stops >= 2);
    iop_timer_stop(&st.restart);
    conn_finish(l, ctx, &st.c);
    peer_stop(&p);
    close(sv[1]);
    iop_test_loop_free(l);
}

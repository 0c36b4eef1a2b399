/* stream_helpers.h - what the stream suites share (test_stream_*.c), each
 * run once per backend variant.
 *
 * One side of each connected pair is a stream; the other is a raw
 * non-blocking fd that the test drives from the same loop with a
 * level-triggered iop_io watcher ("the peer"), so that large transfers never
 * deadlock and every wait is bounded by a timer.  Pairs come from
 * socketpair(AF_UNIX) and from TCP loopback; tests that run on both are
 * registered twice, as NAME_unix and NAME_tcp, so a failure names the kind.
 *
 * Every byte that crosses a stream is a pattern byte (pat(seed, offset)) and
 * is checked on arrival: "byte-exact" here means every byte, in order.
 *
 * The suites, by concern: test_stream_read.c (half-close, RST, read_stop),
 * test_stream_write.c (transfers, ordering, backpressure, lent bytes),
 * test_stream_file.c (sendfile) and test_stream_life.c (contexts, many
 * streams, the idle clock, closing from every callback). */
#ifndef IOP_STREAM_HELPERS_H
#define IOP_STREAM_HELPERS_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
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
static inline unsigned char pat(unsigned seed, size_t i)
{
    uint32_t x = (uint32_t)i * 2654435761u + seed * 40503u + (uint32_t)(i >> 32);
    x ^= x >> 15;
    return (unsigned char)(x ^ (x >> 8) ^ seed);
}

static inline void fill(unsigned char *buf, unsigned seed, size_t off, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = pat(seed, off + i);
}

/* Fails the test at the first byte that is not the pattern. */
static inline void verify(const void *buf, unsigned seed, size_t off, size_t len, const char *who)
{
    const unsigned char *b = buf;
    for (size_t i = 0; i < len; i++)
        if (b[i] != pat(seed, off + i))
            iop_test_fail(__FILE__, __LINE__, "%s: byte %zu is 0x%02x, expected 0x%02x", who,
                          off + i, b[i], pat(seed, off + i));
}

/* ---- connected pairs -------------------------------------------------- */

static inline void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    CHECK(fl >= 0);
    CHECK(fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0);
}

static inline int tcp_listener(struct sockaddr_in *addr, int backlog)
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
static inline void tcp_pair(int sv[2])
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

static inline void make_pair(enum pair_kind kind, int sv[2])
{
    if (kind == PAIR_TCP)
        tcp_pair(sv);
    else
        CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
}

/* Close with RST instead of FIN (TCP). */
static inline void close_rst(int fd)
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

static inline void waiter_guard_cb(iop_timer *t)
{
    *(int *)t->data = 1;
}

static inline void waiter_tick_cb(iop_timer *t)
{
    (void)t;
}

static inline void waiter_start(struct waiter *w, iop_loop *l, int timeout_ms)
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

static inline void waiter_end(struct waiter *w)
{
    iop_timer_stop(&w->guard);
    iop_timer_stop(&w->tick);
}

static inline void waiter_step(struct waiter *w, int mode, const char *file, int line,
                               const char *what)
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
static inline void settle(iop_loop *l, int ms)
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

static inline size_t peer_max(size_t a, size_t b)
{
    return a > b ? a : b;
}

static inline void peer_update(struct peer *p)
{
    unsigned ev = IOP_LEVEL;
    if (p->reading && !p->eof && !p->err)
        ev |= IOP_READ;
    if (p->sent < p->send_total && !p->err)
        ev |= IOP_WRITE;
    CHECK_OK(iop_io_modify(&p->io, ev));
}

static inline void peer_recv(struct peer *p)
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

static inline void peer_send(struct peer *p)
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

static inline void peer_cb(iop_io *w, unsigned revents)
{
    struct peer *p = w->data;
    if ((revents & (IOP_READ | IOP_ERROR)) && p->reading && !p->eof)
        peer_recv(p);
    if ((revents & IOP_WRITE) || (p->sent == p->send_total && p->shut_after))
        peer_send(p);
    peer_update(p);
}

/* Start driving fd (the test keeps ownership of it: peer_stop, then close). */
static inline void peer_start(iop_loop *l, struct peer *p, int fd)
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

static inline void peer_stop(struct peer *p)
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

static inline void conn_close_now(struct conn *c)
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
static inline void note_full(struct conn *c, int rc)
{
    if (rc == 1 && c->fulls == c->drains)
        c->fulls++;
}

static inline void produce(struct conn *c)
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

static inline void conn_read(iop_stream *s, ssize_t nread, const char *buf)
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

static inline void conn_drain(iop_stream *s)
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

static inline void conn_closed(iop_stream *s)
{
    struct conn *c = iop_stream_data(s);
    CHECK(!c->in_close);
    c->closes++;
    CHECK_EQ(c->closes, 1);
    c->closed_at = iop_test_now_ms();
    if (c->act & ACT_CLOSE_CLOSE)
        iop_stream_close(s); /* "a second call is a no-op", here too */
}

static inline struct iop_stream_config conn_config(void)
{
    struct iop_stream_config cfg = {
        .on_read = conn_read,
        .on_drain = conn_drain,
        .on_close = conn_closed,
    };
    return cfg;
}

static inline iop_stream_ctx *new_ctx(iop_loop *l, const struct iop_stream_config *cfg)
{
    iop_stream_ctx *ctx = NULL;
    CHECK_OK(iop_stream_ctx_new(l, cfg, &ctx));
    CHECK(ctx);
    CHECK(iop_stream_ctx_loop(ctx) == l);
    return ctx;
}

static inline void conn_open(iop_stream_ctx *ctx, const struct iop_stream_config *cfg,
                             struct conn *c, int fd)
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
static inline void conn_produce(struct conn *c, unsigned seed, size_t total, size_t chunk)
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
static inline void conn_finish(iop_loop *l, iop_stream_ctx *ctx, struct conn *c)
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

#define FILE_SIZE (4 * MiB + 13)

/* A pattern file (seed 81) in /tmp, already unlinked. */
static inline int make_file(void)
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

static inline int fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

/* Shrink the kernel buffers of a pair (stream side sv[0], peer sv[1]). */
static inline void small_bufs(int sv[2], int size)
{
    CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof size) == 0);
    CHECK(setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &size, sizeof size) == 0);
}

/* A peer on fd that keeps up to total bytes in got, read 65537 at a time. */
static inline void peer_keep(iop_loop *l, struct peer *p, int fd, unsigned char *got, size_t total)
{
    *p = (struct peer){.reading = 1, .keep = got, .keep_cap = total, .recv_chunk = 65537};
    peer_start(l, p, fd);
}

/* The peer read to EOF and got exactly expect[0, total). */
static inline void expect_got(iop_loop *l, struct peer *p, const unsigned char *got,
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
static inline void pair_case_end(iop_loop *l, iop_stream_ctx *ctx, struct conn *c, struct peer *p,
                                 int far, unsigned char *expect, unsigned char *got)
{
    conn_finish(l, ctx, c);
    peer_stop(p);
    close(far);
    free(expect);
    free(got);
}

#endif

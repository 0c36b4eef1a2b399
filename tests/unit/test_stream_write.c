/* test_stream_write.c - streams: byte-exact transfers through odd chunk sizes, ordering and
 * coalescing, backpressure, lent bytes (writev_ref). Helpers and the pair/peer model:
 * stream_helpers.h. */
#include "stream_helpers.h"

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

/* ---- out of memory: all of a write, or none of it ---------------------- */

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

/* test_stream_read.c - streams: half-close, RSTs and vanished peers, read_stop.
 * Helpers and the pair/peer model: stream_helpers.h. */
#include "stream_helpers.h"

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

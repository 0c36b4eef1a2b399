/* test_stream_tls.c - TLS on streams (iop_stream_tls), once per backend
 * variant: a server stream and a client stream over a socketpair, both on
 * the test's loop, so readiness and io_uring engines both carry it. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ioplex/stream.h"
#include "ioplex/tls.h"
#include "runner.h"
#include "tls_helpers.h"

#define BIG (1u << 20)

struct side {
    iop_stream *s;
    unsigned char *got;
    size_t ngot;
    int eof, err, closed, tls_fails;
    int ended; /* eof or err: set in on_read, where a wait can see it */
    int echo;  /* write back what arrives */
};

static unsigned char pat(size_t i)
{
    return (unsigned char)(i * 31 + (i >> 9));
}

static void on_read(iop_stream *s, ssize_t n, const char *buf)
{
    struct side *d = iop_stream_data(s);
    if (n > 0) {
        if (d->got) {
            if (d->ngot + (size_t)n > 5 * BIG)
                iop_test_fail(__FILE__, __LINE__, "%zu + %zd bytes: more than sent", d->ngot, n);
            memcpy(d->got + d->ngot, buf, (size_t)n);
        }
        d->ngot += (size_t)n;
        if (d->echo)
            CHECK(iop_stream_write(s, buf, (size_t)n) >= 0);
        return;
    }
    d->ended = 1;
    if (n == 0) {
        d->eof = 1;
        if (d->echo)
            iop_stream_end(s);
        return;
    }
    d->err = (int)n;
    iop_stream_close(s);
}

static void on_close(iop_stream *s)
{
    struct side *d = iop_stream_data(s);
    d->closed = 1;
}

static void tls_failed(void *arg, const iop_stream *s, int err)
{
    (void)s;
    (void)err;
    ((struct side *)arg)->tls_fails++;
}

/* One loop step; fails the test after 20 s of them. */
static void step(iop_loop *loop, long long *deadline)
{
    if (!*deadline)
        *deadline = iop_test_now_ms() + 20000;
    CHECK(iop_test_now_ms() < *deadline);
    CHECK(iop_loop_run(loop, IOP_RUN_ONCE) >= 0);
}

/* on_close runs from the deferred phase, after which the loop would wait:
 * run the loop without waiting until it has. */
static void wait_closed(iop_loop *loop, struct side *d)
{
    for (int i = 0; i < 100 && !d->closed; i++)
        CHECK(iop_loop_run(loop, IOP_RUN_NOWAIT) >= 0);
    CHECK(d->closed);
}

struct fixture {
    struct certs certs;
    iop_loop *loop;
    iop_stream_ctx *sctx, *cctx;
    iop_tls_ctx *stls, *ctls;
    struct side srv, cli;
};

static void setup(struct fixture *f, const struct iop_test_backend *be, unsigned idle_ms)
{
    memset(f, 0, sizeof *f);
    make_certs(&f->certs, 0);
    f->loop = iop_test_loop(be);
    struct iop_stream_config cfg = {.on_read = on_read, .on_close = on_close};
    CHECK_OK(iop_stream_ctx_new(f->loop, &cfg, &f->cctx));
    cfg.idle_timeout_ms = idle_ms;
    CHECK_OK(iop_stream_ctx_new(f->loop, &cfg, &f->sctx));
    iop_stream_ctx_on_tls_fail(f->sctx, tls_failed, &f->srv);
    struct iop_tls_server_config sc = {.cert_file = f->certs.ec_cert, .key_file = f->certs.ec_key};
    struct iop_tls_client_config cc = {.ca_file = f->certs.ec_cert};
    CHECK_OK(iop_tls_server_new(&sc, NULL, &f->stls));
    CHECK_OK(iop_tls_client_new(&cc, NULL, &f->ctls));
}

/* The server stream on fds[0]; the client stream on fds[1] unless raw. */
static int pair(struct fixture *f, int raw_client)
{
    int fds[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    CHECK_OK(iop_stream_open(f->sctx, fds[0], &f->srv.s));
    iop_stream_set_data(f->srv.s, &f->srv);
    CHECK_OK(iop_stream_tls(f->srv.s, f->stls, NULL));
    CHECK_OK(iop_stream_read_start(f->srv.s));
    if (raw_client)
        return fds[1];
    CHECK_OK(iop_stream_open(f->cctx, fds[1], &f->cli.s));
    iop_stream_set_data(f->cli.s, &f->cli);
    CHECK_OK(iop_stream_tls(f->cli.s, f->ctls, "localhost"));
    CHECK_OK(iop_stream_read_start(f->cli.s));
    return -1;
}

static void teardown(struct fixture *f)
{
    CHECK_OK(iop_stream_ctx_free(f->sctx));
    CHECK_OK(iop_stream_ctx_free(f->cctx));
    iop_tls_ctx_free(f->stls);
    iop_tls_ctx_free(f->ctls);
    iop_test_loop_free(f->loop);
    free(f->srv.got);
    free(f->cli.got);
    drop_certs(&f->certs);
}

IOP_TEST(tls_stream_echo, be)
{
    struct fixture f;
    setup(&f, be, 0);
    f.srv.echo = 1;
    f.cli.got = malloc(5 * BIG);
    pair(&f, 0);
    /* Written before the handshake: held, then sent in order. */
    unsigned char *out = malloc(BIG);
    for (size_t i = 0; i < BIG; i++)
        out[i] = pat(i);
    for (size_t off = 0; off < BIG; off += 4096)
        CHECK(iop_stream_write(f.cli.s, out + off, 4096) >= 0);
    long long deadline = 0;
    while (f.cli.ngot < BIG) {
        step(f.loop, &deadline);
        CHECK(!f.cli.err && !f.srv.err);
    }
    CHECK(memcmp(out, f.cli.got, BIG) == 0);
    size_t alen;
    CHECK(iop_stream_tls_alpn(f.cli.s, &alen) == NULL);
    /* close_notify, then the FIN: each side sees EOF and closes. */
    /* close_notify, then the FIN: the server reads EOF and ends too; the
     * client, done with it all, closes once its goodbye is out. */
    iop_stream_end(f.cli.s);
    iop_test_run_until(f.loop, &f.srv.ended, 5000);
    wait_closed(f.loop, &f.srv);
    CHECK_EQ(f.srv.eof, 1);
    /* its own goodbye may meet the closed socket */
    CHECK(f.srv.err == 0 || f.srv.err == -EPIPE || f.srv.err == -ECONNRESET);
    wait_closed(f.loop, &f.cli);
    CHECK_EQ(f.cli.err, 0);
    free(out);
    teardown(&f);
}

static int pattern_file(size_t len)
{
    char path[] = "/tmp/iop-stls-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    unlink(path);
    unsigned char buf[4096];
    for (size_t off = 0; off < len; off += sizeof buf) {
        for (size_t i = 0; i < sizeof buf; i++)
            buf[i] = pat(off + i);
        CHECK(write(fd, buf, sizeof buf) == (ssize_t)sizeof buf);
    }
    return fd;
}

IOP_TEST(tls_stream_file_and_truncation, be)
{
    struct fixture f;
    setup(&f, be, 0);
    f.cli.got = malloc(5 * BIG);
    pair(&f, 0);
    int fd = pattern_file(3 * BIG);
    /* The whole file, behind a head, in order, bounded by the high-water
     * mark on the way (the client reads as it comes). */
    struct iovec head = {(void *)"HEAD", 4};
    CHECK(iop_stream_sendfilev(f.srv.s, &head, 1, fd, 0, 3 * BIG, IOP_SENDFILE_DUP) >= 0);
    long long deadline = 0;
    while (f.cli.ngot < 3 * BIG + 4) {
        step(f.loop, &deadline);
        CHECK(!f.cli.err && !f.srv.err);
        CHECK(iop_stream_queued(f.srv.s) <= (1u << 20) + 2 * 65536);
        for (size_t i = 4; i < f.cli.ngot; i++)
            if (f.cli.got[i] != pat(i - 4))
                iop_test_fail(__FILE__, __LINE__, "byte %zu of %zu", i - 4, f.cli.ngot);
    }
    CHECK(memcmp(f.cli.got, "HEAD", 4) == 0);
    for (size_t i = 0; i < 3 * BIG; i++)
        if (f.cli.got[4 + i] != pat(i))
            iop_test_fail(__FILE__, __LINE__, "byte %zu", i);
    /* A file shorter than promised (truncated meanwhile): -EIO, no crash. */
    CHECK(ftruncate(fd, BIG) == 0);
    CHECK(iop_stream_sendfile(f.srv.s, fd, 0, 2 * BIG, 0) >= 0);
    iop_test_run_until(f.loop, &f.srv.ended, 5000);
    CHECK_EQ(f.srv.err, -EIO);
    wait_closed(f.loop, &f.srv);
    close(fd);
    iop_test_run_until(f.loop, &f.cli.eof, 5000);
    iop_stream_close(f.cli.s);
    wait_closed(f.loop, &f.cli);
    teardown(&f);
}

IOP_TEST(tls_stream_stalled_and_garbage, be)
{
    struct fixture f;
    setup(&f, be, 200);
    /* A peer that says nothing: the handshake times out. */
    int raw = pair(&f, 1);
    long long t0 = iop_test_now_ms();
    iop_test_run_until(f.loop, &f.srv.ended, 5000);
    CHECK_EQ(f.srv.err, -ETIMEDOUT);
    wait_closed(f.loop, &f.srv);
    CHECK(iop_test_now_ms() - t0 >= 150);
    CHECK_EQ(f.srv.tls_fails, 1);
    close(raw);
    /* A peer that speaks HTTP: -EPROTO, and the why. */
    f.srv = (struct side){0};
    raw = pair(&f, 1);
    const char *get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(write(raw, get, strlen(get)) == (ssize_t)strlen(get));
    iop_test_run_until(f.loop, &f.srv.ended, 5000);
    CHECK_EQ(f.srv.err, -EPROTO);
    wait_closed(f.loop, &f.srv);
    CHECK_EQ(f.srv.tls_fails, 1);
    close(raw);
    teardown(&f);
}

/* test_server_blocking.c - the blocking-style handler under the iterative,
 * thread, fork and coro models (src/server/blocking.c, coro_model.c,
 * conn.c).
 *
 * Each test loops over the four models (the last one, over all five: the
 * core they share).  The server runs on a thread of
 * the test (server_helpers.h); the backend of the variant only drives its
 * accept loop.  Handlers answer through the socket, so that the checks
 * hold for fork children too. */
#include <ctype.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "ioplex/proto.h"
#include "server_helpers.h"

static const int models[] = {IOP_MODEL_ITERATIVE, IOP_MODEL_THREAD, IOP_MODEL_FORK, IOP_MODEL_CORO};
#define NMODELS (sizeof models / sizeof models[0])

/* Set before a server starts (fork children inherit it). */
static size_t line_max = 1024;
/* The result that ended the last handle() (iterative and thread only). */
static atomic_long last_rc;

static int sendall_str(iop_conn *c, const char *s)
{
    return iop_conn_sendall(c, s, strlen(s));
}

/* Upper-cases every line.  Errors are answered where the socket still
 * works: "E\n" for a line over line_max (then it goes on), "T\n" when idle
 * too long, "C\n" when cancelled (best effort). */
static void upper_handle(iop_conn *c)
{
    char line[4096];
    ssize_t n;
    for (;;) {
        n = iop_conn_readline(c, line, line_max < sizeof line ? line_max : sizeof line);
        if (n == -EMSGSIZE) {
            if (sendall_str(c, "E\n") < 0)
                break;
            continue;
        }
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; i++)
            line[i] = (char)toupper((unsigned char)line[i]);
        if (iop_conn_sendall(c, line, (size_t)n) < 0)
            break;
    }
    if (n == -ETIMEDOUT)
        sendall_str(c, "T\n");
    atomic_store(&last_rc, (long)n);
}

static struct iop_server_config config(int model, const struct iop_handler *h)
{
    struct iop_server_config cfg = {0};
    cfg.model = model;
    cfg.handler = h;
    return cfg;
}

/* ---- lines ------------------------------------------------------------- */

IOP_TEST(upper_lines, be)
{
    static const struct iop_handler h = {.handle = upper_handle};
    for (size_t k = 0; k < NMODELS; k++) {
        struct fixture f;
        fixture_start(&f, be, config(models[k], &h), 1);
        for (int round = 0; round < 2; round++) {
            int fd = client(&f, 0);
            puts_(fd, "hello\nwor"); /* a line split across two writes */
            expect_line(fd, "HELLO\n");
            usleep(20000);
            puts_(fd, "ld\n");
            expect_line(fd, "WORLD\n");
            /* The last line without '\n' comes back as it is. */
            puts_(fd, "tail");
            CHECK(shutdown(fd, SHUT_WR) == 0);
            char buf[16];
            CHECK_EQ(get_some(fd, buf, sizeof buf), 4);
            CHECK(memcmp(buf, "TAIL", 4) == 0);
            expect_eof(fd);
            close(fd);
        }
        if (models[k] != IOP_MODEL_ITERATIVE) {
            /* Two clients at once, answered in the order they ask. */
            int a = client(&f, 0), b = client(&f, 0);
            puts_(b, "b\n");
            expect_line(b, "B\n");
            puts_(a, "a\n");
            expect_line(a, "A\n");
            close(a);
            close(b);
        }
        fixture_stop(&f);
    }
}

IOP_TEST(readline_emsgsize, be)
{
    static const struct iop_handler h = {.handle = upper_handle};
    line_max = 16;
    for (size_t k = 0; k < NMODELS; k++) {
        struct fixture f;
        fixture_start(&f, be, config(models[k], &h), 1);
        int fd = client(&f, 0);
        /* 16 bytes consumed by the refusal, the rest is the next line. */
        puts_(fd, "abcdefghijklmnopqrs\nexactly 15 ch\n");
        expect_line(fd, "E\n");
        expect_line(fd, "QRS\n");
        expect_line(fd, "EXACTLY 15 CH\n");
        puts_(fd, "sixteen bytes!!\n"); /* 16 with the '\n': fits */
        expect_line(fd, "SIXTEEN BYTES!!\n");
        close(fd);
        fixture_stop(&f);
    }
    line_max = 1024;
}

IOP_TEST(idle_timeout, be)
{
    static const struct iop_handler h = {.handle = upper_handle};
    for (size_t k = 0; k < NMODELS; k++) {
        struct iop_server_config cfg = config(models[k], &h);
        cfg.idle_timeout_ms = 200;
        struct fixture f;
        fixture_start(&f, be, cfg, 1);
        int fd = client(&f, 0);
        /* Timed from before the request: the server's idle clock cannot
         * start earlier, however late its reply reaches us under load. */
        long long t0 = iop_test_now_ms();
        puts_(fd, "x\n");
        expect_line(fd, "X\n");
        expect_line(fd, "T\n");
        long long took = iop_test_now_ms() - t0;
        CHECK(took >= 190 && took < 3000);
        expect_eof(fd);
        close(fd);
        fixture_stop(&f);
        if (models[k] != IOP_MODEL_FORK)
            CHECK_EQ(atomic_load(&last_rc), -ETIMEDOUT);
    }
}

/* ---- bytes ------------------------------------------------------------- */

static void echo_handle(iop_conn *c)
{
    char buf[4096];
    ssize_t n;
    while ((n = iop_conn_recv(c, buf, sizeof buf)) > 0)
        if (iop_conn_sendall(c, buf, (size_t)n) < 0)
            return;
}

static unsigned char pattern(size_t i)
{
    return (unsigned char)((i * 7 + i / 251) & 0xff);
}

/* Send len pattern bytes while reading the echo back, then check it. */
static void echo_roundtrip(int fd, size_t len)
{
    unsigned char *in = malloc(len), out[65536];
    CHECK(in != NULL);
    CHECK(fcntl(fd, F_SETFL, O_NONBLOCK) == 0);
    size_t sent = 0, got = 0;
    long long deadline = iop_test_now_ms() + 10000;
    while (got < len) {
        CHECK(iop_test_now_ms() < deadline);
        struct pollfd p = {fd, (short)(POLLIN | (sent < len ? POLLOUT : 0)), 0};
        if (poll(&p, 1, 1000) <= 0)
            continue;
        if ((p.revents & POLLOUT) && sent < len) {
            size_t n = len - sent < sizeof out ? len - sent : sizeof out;
            for (size_t i = 0; i < n; i++)
                out[i] = pattern(sent + i);
            ssize_t w = send(fd, out, n, MSG_NOSIGNAL);
            CHECK(w > 0 || errno == EAGAIN);
            if (w > 0 && (sent += (size_t)w) == len)
                CHECK(shutdown(fd, SHUT_WR) == 0);
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = recv(fd, in + got, len - got, 0);
            CHECK(r > 0 || (r < 0 && errno == EAGAIN));
            if (r > 0)
                got += (size_t)r;
        }
    }
    for (size_t i = 0; i < len; i++)
        if (in[i] != pattern(i))
            iop_test_fail(__FILE__, __LINE__, "byte %zu: %u != %u", i, in[i], pattern(i));
    free(in);
    CHECK(fcntl(fd, F_SETFL, 0) == 0);
    expect_eof(fd);
}

IOP_TEST(one_mib_byte_exact, be)
{
    static const struct iop_handler h = {.handle = echo_handle};
    for (size_t k = 0; k < NMODELS; k++) {
        struct fixture f;
        fixture_start(&f, be, config(models[k], &h), 1);
        int fd = client(&f, 0);
        echo_roundtrip(fd, 1u << 20);
        close(fd);
        fixture_stop(&f);
    }
}

/* Frames: a 4-byte big-endian length, then the body; the answer is
 * "<len> <first byte><last byte>\n".  EOF inside a frame: "EPIPE\n". */
static void frame_handle(iop_conn *c)
{
    unsigned char hdr[4];
    static char body[1 << 18];
    for (;;) {
        ssize_t n = iop_conn_recv_exact(c, hdr, 4);
        if (n <= 0)
            break;
        size_t len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
        if (len > sizeof body)
            break;
        n = iop_conn_recv_exact(c, body, len);
        if (n == -EPIPE) {
            sendall_str(c, "EPIPE\n");
            break;
        }
        if (n != (ssize_t)len)
            break;
        char reply[64];
        int r = snprintf(reply, sizeof reply, "%zu %c%c\n", len, len ? body[0] : '-',
                         len ? body[len - 1] : '-');
        if (iop_conn_sendall(c, reply, (size_t)r) < 0)
            break;
    }
}

static void put_frame_split(int fd, const char *body, size_t len)
{
    unsigned char hdr[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16),
                            (unsigned char)(len >> 8), (unsigned char)len};
    put(fd, hdr, 1); /* the header split, then the body split */
    usleep(10000);
    put(fd, hdr + 1, 3);
    usleep(10000);
    put(fd, body, len / 2);
    usleep(10000);
    put(fd, body + len / 2, len - len / 2);
}

IOP_TEST(recv_exact_split, be)
{
    static const struct iop_handler h = {.handle = frame_handle};
    size_t big = 100000; /* over the read-ahead buffer: read straight in */
    char *body = malloc(big);
    CHECK(body != NULL);
    memset(body, 'm', big);
    body[0] = 'a';
    body[big - 1] = 'z';
    for (size_t k = 0; k < NMODELS; k++) {
        struct fixture f;
        fixture_start(&f, be, config(models[k], &h), 1);
        int fd = client(&f, 0);
        put_frame_split(fd, "hello", 5);
        expect_line(fd, "5 ho\n");
        put(fd, "\0\0\0\0", 4); /* empty frame */
        expect_line(fd, "0 --\n");
        put_frame_split(fd, body, big);
        expect_line(fd, "100000 az\n");
        /* Two frames in one write. */
        put(fd, "\0\0\0\2xy\0\0\0\1q", 11);
        expect_line(fd, "2 xy\n");
        expect_line(fd, "1 qq\n");
        /* EOF inside a frame. */
        put(fd,
            "\0\0\0\x0a"
            "abc",
            7);
        CHECK(shutdown(fd, SHUT_WR) == 0);
        expect_line(fd, "EPIPE\n");
        expect_eof(fd);
        close(fd);
        fixture_stop(&f);
    }
    free(body);
}

/* ---- sendfile ---------------------------------------------------------- */

static int sendfile_fd = -1;
#define SENDFILE_LEN (300000u)

/* SENDFILE_LEN pattern bytes in an unnamed file; sendfile_fd is its fd. */
static FILE *pattern_file(void)
{
    FILE *tmp = tmpfile();
    CHECK(tmp != NULL);
    for (size_t i = 0; i < SENDFILE_LEN; i++)
        fputc(pattern(i), tmp);
    CHECK(fflush(tmp) == 0);
    sendfile_fd = fileno(tmp);
    return tmp;
}

static void sendfile_handle(iop_conn *c)
{
    /* Skip the first 1000 bytes: the offset is honoured. */
    iop_conn_sendfile(c, sendfile_fd, 1000, SENDFILE_LEN - 1000);
}

IOP_TEST(sendfile_exact, be)
{
    static const struct iop_handler h = {.handle = sendfile_handle};
    FILE *tmp = pattern_file();
    char *in = malloc(SENDFILE_LEN);
    CHECK(in != NULL);
    for (size_t k = 0; k < NMODELS; k++) {
        struct fixture f;
        fixture_start(&f, be, config(models[k], &h), 1);
        int fd = client(&f, 0);
        size_t got = 0;
        ssize_t r;
        while ((r = get_some(fd, in + got, SENDFILE_LEN - got)) > 0)
            got += (size_t)r;
        CHECK_EQ(r, 0);
        CHECK_EQ(got, SENDFILE_LEN - 1000);
        for (size_t i = 0; i < got; i++)
            CHECK_EQ((unsigned char)in[i], pattern(i + 1000));
        close(fd);
        fixture_stop(&f);
    }
    free(in);
    fclose(tmp);
}

/* sendfile to a peer that reset: an error, never a SIGPIPE death, whether
 * the process ignores SIGPIPE (sendfile(2) as it is) or not (the call holds
 * SIGPIPE back).  Fork children report through their exit, so the models
 * here are those that share our memory. */
static atomic_int vanished_rc;

static void vanished_handle(iop_conn *c)
{
    char b[64];
    while (iop_conn_recv(c, b, sizeof b) > 0)
        ;
    int rc = 0;
    for (int i = 0; i < 100 && rc == 0; i++) /* the first ones may fit the buffer */
        rc = iop_conn_sendfile(c, sendfile_fd, 0, SENDFILE_LEN);
    atomic_store(&vanished_rc, rc ? rc : 1);
}

IOP_TEST(sendfile_to_vanished_peer, be)
{
    static const struct iop_handler h = {.handle = vanished_handle};
    static const int shared[] = {IOP_MODEL_ITERATIVE, IOP_MODEL_THREAD, IOP_MODEL_CORO};
    FILE *tmp = pattern_file();
    for (int ign = 0; ign < 2; ign++) {
        signal(SIGPIPE, ign ? SIG_IGN : SIG_DFL);
        for (size_t k = 0; k < sizeof shared / sizeof shared[0]; k++) {
            atomic_store(&vanished_rc, 0);
            struct fixture f;
            fixture_start(&f, be, config(shared[k], &h), 1);
            int fd = client(&f, 0);
            struct linger lg = {1, 0}; /* close with a reset */
            CHECK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
            close(fd);
            for (int i = 0; i < 500 && !atomic_load(&vanished_rc); i++)
                usleep(10000);
            int rc = atomic_load(&vanished_rc);
            CHECK(rc == -EPIPE || rc == -ECONNRESET);
            fixture_stop(&f);
        }
    }
    signal(SIGPIPE, SIG_DFL);
    fclose(tmp);
}

/* A client that never reads: sendfile must give up after idle_timeout_ms
 * with -ETIMEDOUT, also in the thread model, whose socket is blocking (there
 * SO_SNDTIMEO ends the sleep inside sendfile(2)). */
#define STUCK_LEN (64u << 20) /* far more than both socket buffers hold */

static atomic_int stuck_rc;
static int stuck_fd = -1;

static void stuck_handle(iop_conn *c)
{
    int rc = iop_conn_sendfile(c, stuck_fd, 0, STUCK_LEN);
    atomic_store(&stuck_rc, rc ? rc : 1);
}

IOP_TEST(sendfile_to_stuck_reader_times_out, be)
{
    static const struct iop_handler h = {.handle = stuck_handle};
    static const int shared[] = {IOP_MODEL_ITERATIVE, IOP_MODEL_THREAD, IOP_MODEL_CORO};
    FILE *tmp = tmpfile();
    CHECK(tmp != NULL && ftruncate(fileno(tmp), STUCK_LEN) == 0); /* sparse: zeros */
    stuck_fd = fileno(tmp);
    for (size_t k = 0; k < sizeof shared / sizeof shared[0]; k++) {
        atomic_store(&stuck_rc, 0);
        struct iop_server_config cfg = config(shared[k], &h);
        cfg.idle_timeout_ms = 300;
        struct fixture f;
        fixture_start(&f, be, cfg, 1);
        int fd = client(&f, 0);
        long long t0 = iop_test_now_ms();
        for (int i = 0; i < 1000 && !atomic_load(&stuck_rc); i++)
            usleep(10000);
        CHECK_EQ(atomic_load(&stuck_rc), -ETIMEDOUT);
        CHECK(iop_test_now_ms() - t0 < 5000);
        close(fd);
        fixture_stop(&f);
    }
    fclose(tmp);
}

/* ---- stopping ---------------------------------------------------------- */

/* Says "busy", takes 300 ms over the answer, then serves lines as usual. */
static void slow_handle(iop_conn *c)
{
    char line[256];
    ssize_t n = iop_conn_readline(c, line, sizeof line);
    if (n <= 0 || sendall_str(c, "busy\n") < 0)
        return;
    usleep(300000);
    sendall_str(c, "done\n");
    upper_handle(c);
}

IOP_TEST(graceful_stop_in_flight, be)
{
    static const struct iop_handler h = {.handle = slow_handle};
    for (size_t k = 0; k < NMODELS; k++) {
        struct fixture f;
        fixture_start(&f, be, config(models[k], &h), 1);
        int fd = client(&f, 0);
        puts_(fd, "go\n");
        expect_line(fd, "busy\n");
        fixture_shutdown(&f);
        expect_line(fd, "done\n"); /* the request in flight is answered */
        puts_(fd, "more\n");       /* and the handler runs on until it ends */
        expect_line(fd, "MORE\n");
        close(fd);
        CHECK(fixture_join(&f) < 2000);
    }
}

/* Blocks in recv until the stop; answers the first line with "ready". */
static void block_handle(iop_conn *c)
{
    char buf[64];
    ssize_t n = iop_conn_readline(c, buf, sizeof buf);
    if (n > 0 && sendall_str(c, "ready\n") == 0)
        n = iop_conn_recv(c, buf, sizeof buf);
    atomic_store(&last_rc, (long)n);
    /* Every later call fails the same way. */
    if (n == -ECANCELED && iop_conn_sendall(c, "x", 1) != -ECANCELED)
        atomic_store(&last_rc, 1);
}

IOP_TEST(stop_now_interrupts_recv, be)
{
    static const struct iop_handler h = {.handle = block_handle};
    for (size_t k = 0; k < NMODELS; k++) {
        struct fixture f;
        fixture_start(&f, be, config(models[k], &h), 1); /* grace: 10 s */
        int fd = client(&f, 0);
        atomic_store(&last_rc, 0);
        puts_(fd, "go\n");
        expect_line(fd, "ready\n");
        fixture_shutdown(&f);
        usleep(50000);
        fixture_shutdown(&f); /* now */
        CHECK(fixture_join(&f) < 2000);
        expect_eof(fd);
        close(fd);
        if (models[k] != IOP_MODEL_FORK)
            CHECK_EQ(atomic_load(&last_rc), -ECANCELED);
    }
}

/* A handler blocked in recv at a graceful stop with grace_ms: the server is
 * done within [lo, hi) ms and the recv returned -ECANCELED. */
static void blocked_at_stop(const struct iop_test_backend *be, unsigned grace_ms, long long lo,
                            long long hi)
{
    static const struct iop_handler h = {.handle = block_handle};
    for (size_t k = 0; k < NMODELS; k++) {
        struct iop_server_config cfg = config(models[k], &h);
        cfg.grace_ms = grace_ms;
        struct fixture f;
        fixture_start(&f, be, cfg, 1);
        int fd = client(&f, 0);
        atomic_store(&last_rc, 0);
        puts_(fd, "go\n");
        expect_line(fd, "ready\n");
        fixture_shutdown(&f);
        long long took = fixture_join(&f);
        CHECK(took >= lo && took < hi);
        expect_eof(fd);
        close(fd);
        if (models[k] != IOP_MODEL_FORK)
            CHECK_EQ(atomic_load(&last_rc), -ECANCELED);
    }
}

IOP_TEST(grace_runs_out, be)
{
    blocked_at_stop(be, 300, 250, 2000);
}

/* IOP_SERVER_GRACE_NONE: a graceful stop does not wait for a handler busy
 * in a call at all (0 would mean the 10 s default). */
IOP_TEST(grace_none_ends_at_once, be)
{
    blocked_at_stop(be, IOP_SERVER_GRACE_NONE, 0, 1000);
}

/* Answers "ready", then waits for the next line marked idle: a graceful
 * stop must end that wait at once (-ECANCELED), not at the grace limit. */
static void idle_handle(iop_conn *c)
{
    char buf[64];
    ssize_t n = iop_conn_readline(c, buf, sizeof buf);
    if (n > 0 && sendall_str(c, "ready\n") == 0) {
        iop_conn_set_idle(c, 1);
        n = iop_conn_recv(c, buf, sizeof buf);
    }
    atomic_store(&last_rc, (long)n);
}

IOP_TEST(graceful_stop_ends_idle_waits, be)
{
    static const struct iop_handler h = {.handle = idle_handle};
    for (size_t k = 0; k < NMODELS; k++) {
        struct fixture f;
        fixture_start(&f, be, config(models[k], &h), 1); /* grace: 10 s */
        int fd = client(&f, 0);
        atomic_store(&last_rc, 0);
        puts_(fd, "go\n");
        expect_line(fd, "ready\n");
        usleep(20000);
        fixture_shutdown(&f);
        CHECK(fixture_join(&f) < 2000);
        expect_eof(fd);
        close(fd);
        if (models[k] != IOP_MODEL_FORK)
            CHECK_EQ(atomic_load(&last_rc), -ECANCELED);
    }
}

/* iop_conn_set_timeout overrides the (absent) idle timeout per wait. */
static void timeout_handle(iop_conn *c)
{
    char buf[64];
    iop_conn_set_timeout(c, 100);
    ssize_t n = iop_conn_recv(c, buf, sizeof buf);
    if (n == -ETIMEDOUT)
        sendall_str(c, "T\n");
}

IOP_TEST(conn_set_timeout, be)
{
    static const struct iop_handler h = {.handle = timeout_handle};
    for (size_t k = 0; k < NMODELS; k++) {
        struct fixture f;
        fixture_start(&f, be, config(models[k], &h), 1);
        int fd = client(&f, 0);
        expect_line(fd, "T\n");
        expect_eof(fd);
        close(fd);
        fixture_stop(&f);
    }
}

/* ---- fork: no zombie ----------------------------------------------------- */

IOP_TEST(fork_leaves_no_zombie, be)
{
    static const struct iop_handler h = {.handle = upper_handle};
    struct fixture f;
    fixture_start(&f, be, config(IOP_MODEL_FORK, &h), 1);
    int fds[6];
    for (int i = 0; i < 6; i++) {
        fds[i] = client(&f, 0);
        puts_(fds[i], "z\n");
        expect_line(fds[i], "Z\n");
    }
    for (int i = 0; i < 6; i++) {
        CHECK(shutdown(fds[i], SHUT_WR) == 0);
        expect_eof(fds[i]); /* the child is done */
        close(fds[i]);
    }
    /* Reaped while running, not only at the end: every child has ended
     * (each client saw EOF), so soon none is left, zombie or not. */
    long long deadline = iop_test_now_ms() + 3000;
    while (children_of(f.pid, 0) != 0 && iop_test_now_ms() < deadline)
        usleep(5000);
    CHECK_EQ(children_of(f.pid, 0), 0);
    int last = client(&f, 0);
    puts_(last, "y\n");
    expect_line(last, "Y\n");
    fixture_shutdown(&f);
    close(last);
    fixture_join(&f); /* exit status 3 if a zombie was left at the end */
}

/* ---- verify, listener, peer ------------------------------------------------ */

static int verify_cb(iop_conn *c)
{
    return iop_conn_listener(c) == 1; /* listener 1 is refused */
}

static void peer_handle(iop_conn *c)
{
    iop_addr peer;
    char text[IOP_ADDR_STRLEN + 2];
    if (iop_conn_peer(c, &peer) < 0 || peer.kind != IOP_ADDR_TCP ||
        iop_addr_format(&peer, text, sizeof text - 1) < 0)
        strcpy(text, "?");
    strcat(text, "\n");
    sendall_str(c, text);
}

IOP_TEST(verify_refuses, be)
{
    static const struct iop_handler h = {.verify = verify_cb, .handle = peer_handle};
    for (size_t k = 0; k < NMODELS; k++) {
        struct fixture f;
        fixture_start(&f, be, config(models[k], &h), 2);
        int bad = client(&f, 1);
        expect_eof(bad);
        close(bad);
        int good = client(&f, 0);
        struct sockaddr_in me;
        socklen_t len = sizeof me;
        CHECK(getsockname(good, (struct sockaddr *)&me, &len) == 0);
        char want[64];
        snprintf(want, sizeof want, "127.0.0.1:%u\n", ntohs(me.sin_port));
        expect_line(good, want);
        close(good);
        fixture_stop(&f);
    }
}

/* ---- datagrams on the accept loop -------------------------------------- */

/* buf upper-cased into out[256]: its length (at most 256). */
static size_t upper_256(char *out, const char *buf, size_t n)
{
    n = n < 256 ? n : 256;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)toupper((unsigned char)buf[i]);
    return n;
}

static void dgram_cb(iop_datagram *d, const char *buf, size_t n)
{
    char out[256];
    iop_datagram_reply(d, out, upper_256(out, buf, n));
}

IOP_TEST(datagrams_beside_streams, be)
{
    static const struct iop_handler h = {.handle = upper_handle, .on_datagram = dgram_cb};
    static const char *const addrs[] = {"127.0.0.1:0", "udp:127.0.0.1:0"};
    for (size_t k = 0; k < NMODELS; k++) {
        struct fixture f;
        fixture_start_addrs(&f, be, config(models[k], &h), addrs, 2);
        const iop_addr *ua = &f.addr[1];
        int u = socket(ua->u.sa.sa_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        CHECK(u >= 0);
        struct timeval tv = {0, 200000};
        CHECK(setsockopt(u, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
        CHECK(connect(u, &ua->u.sa, ua->len) == 0);
        char buf[16];
        ssize_t r = -1;
        for (int tries = 0; tries < 20 && r != 3; tries++) { /* the loop may not be up yet */
            CHECK(send(u, "udp", 3, 0) == 3);
            r = get_some(u, buf, sizeof buf);
        }
        CHECK_EQ(r, 3);
        CHECK(memcmp(buf, "UDP", 3) == 0);
        int fd = client(&f, 0); /* and a stream beside it */
        puts_(fd, "tcp\n");
        expect_line(fd, "TCP\n");
        close(fd);
        close(u);
        fixture_stop(&f);
    }
}

/* ---- every model on the one core ------------------------------------------ */

static atomic_int listener_stopped_logs;

static void count_log(void *arg, const char *line)
{
    (void)arg;
    if (strstr(line, "accept on listener 0") && strstr(line, "(listener stopped)"))
        atomic_fetch_add(&listener_stopped_logs, 1);
}

static void upper_data(iop_stream *s, const char *buf, size_t n)
{
    char out[256];
    iop_stream_write(s, out, upper_256(out, buf, n));
}

/* A listening socket that breaks (here: shut down under the server, so that
 * accept says EINVAL) is logged once and stopped, in every model alike; the
 * other listener serves on and the server still stops cleanly. */
IOP_TEST(broken_listener_stops_alone, be)
{
    static const struct iop_handler h = {.handle = upper_handle, .on_data = upper_data};
    static const int all[] = {IOP_MODEL_EVENT, IOP_MODEL_ITERATIVE, IOP_MODEL_THREAD,
                              IOP_MODEL_FORK, IOP_MODEL_CORO};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) {
        struct iop_server_config cfg = config(all[k], &h);
        cfg.backend = be->kind;
        cfg.loop_flags = be->flags;
        cfg.log = count_log;
        atomic_store(&listener_stopped_logs, 0);
        iop_addr a;
        int lfd, keep;
        CHECK_OK(iop_addr_parse("127.0.0.1:0", &a));
        CHECK_OK(iop_listen(&a, NULL, &lfd));
        CHECK((keep = dup(lfd)) >= 0);
        struct fixture f;
        memset(&f, 0, sizeof f);
        CHECK_OK(iop_server_new(&cfg, &f.srv));
        CHECK_EQ(iop_server_adopt(f.srv, lfd), 0);
        CHECK_EQ(iop_server_listen(f.srv, "127.0.0.1:0"), 1);
        CHECK_OK(iop_server_addr(f.srv, 1, &f.addr[1]));
        f.rc = -1;
        if (all[k] == IOP_MODEL_FORK)
            fixture_fork(&f);
        else
            CHECK(pthread_create(&f.thread, NULL, fixture_main, &f) == 0);
        int fd = client(&f, 1); /* serving */
        puts_(fd, "a\n");
        expect_line(fd, "A\n");
        close(fd); /* iterative: the loop is the handler's until it ends */
        CHECK(shutdown(keep, SHUT_RD) == 0);
        for (int i = 0; i < 200 && all[k] != IOP_MODEL_FORK && !atomic_load(&listener_stopped_logs);
             i++)
            usleep(10000);
        if (all[k] != IOP_MODEL_FORK)
            CHECK_EQ(atomic_load(&listener_stopped_logs), 1);
        int fd2 = client(&f, 1); /* the other listener serves on */
        puts_(fd2, "b\n");
        expect_line(fd2, "B\n");
        close(fd2);
        fixture_stop(&f);
        close(keep);
        CHECK_EQ(atomic_load(&listener_stopped_logs), all[k] == IOP_MODEL_FORK ? 0 : 1);
    }
}

/* A stock protocol keeps its state in the handler (ctx): the server's data
 * slot is the user's in every model, and the protocol never reads it (here
 * it holds bytes that would wreck an echo configuration). */
IOP_TEST(stock_protocol_leaves_user_data, be)
{
    static const int all[] = {IOP_MODEL_EVENT, IOP_MODEL_ITERATIVE, IOP_MODEL_THREAD,
                              IOP_MODEL_FORK, IOP_MODEL_CORO};
    static unsigned char mine[sizeof(struct iop_echo_config) + 64];
    memset(mine, 0xff, sizeof mine);
    struct iop_echo_config ec = {.mode = IOP_ECHO_LINES};
    struct iop_handler h;
    CHECK_OK(iop_echo_handler(&ec, &h));
    CHECK(h.ctx == &ec);
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) {
        struct iop_server_config cfg = config(all[k], &h);
        cfg.data = mine;
        struct fixture f;
        fixture_start(&f, be, cfg, 1);
        CHECK(iop_server_data(f.srv) == mine);
        CHECK(iop_server_handler_ctx(f.srv) == &ec);
        int fd = client(&f, 0);
        puts_(fd, "abc\n");
        expect_line(fd, "abc\n");
        close(fd);
        fixture_stop(&f);
    }
}

/* test_ops.c - completion operations (iop_op_*, iop_bufring_*), run once per
 * backend variant.  Readiness backends must refuse every op with -ENOTSUP;
 * the io_uring variants run them for real. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "runner.h"

static void pair(int sv[2])
{
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
}

static void close_pair(int sv[2])
{
    close(sv[0]);
    close(sv[1]);
}

/* A nonblocking TCP listener on 127.0.0.1 with a port picked by the kernel. */
static int tcp_listener(struct sockaddr_in *addr)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(fd, (struct sockaddr *)addr, sizeof *addr) == 0);
    CHECK(listen(fd, 16) == 0);
    socklen_t len = sizeof *addr;
    CHECK(getsockname(fd, (struct sockaddr *)addr, &len) == 0);
    return fd;
}

/* A blocking client; connect to loopback completes from the backlog. */
static int tcp_connect(const struct sockaddr_in *addr)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    CHECK(connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0);
    return fd;
}

/* A connected TCP pair: sv[0] the client (blocking), sv[1] the accepted
 * side (nonblocking). */
static void tcp_pair(int sv[2])
{
    struct sockaddr_in addr;
    int lfd = tcp_listener(&addr);
    sv[0] = tcp_connect(&addr);
    sv[1] = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    CHECK(sv[1] >= 0);
    close(lfd);
}

static int is_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

/* The ops run only on loops with IOP_CAP_COMPLETION; ask before making one
 * so that a skip leaves nothing behind. */
static iop_loop *uring_loop(const struct iop_test_backend *be)
{
    if (be->kind != IOP_BACKEND_URING)
        IOP_SKIP("completion ops need the uring backend");
    iop_loop *l = iop_test_loop(be);
    CHECK(iop_loop_caps(l) & IOP_CAP_COMPLETION);
    return l;
}

/* Records every callback of one op. */
#define MAXCALLS 32

struct rec {
    iop_op op; /* first: the callback casts back */
    int calls;
    int done; /* the last callback (without IOP_OP_MORE) came */
    int res[MAXCALLS];
    unsigned flags[MAXCALLS];
    unsigned buf_id[MAXCALLS];
    char data[MAXCALLS][64]; /* a copy of IOP_OP_BUFFER data */
    iop_bufring *br;
};

static void rec_cb(iop_op *op, int res, unsigned flags)
{
    struct rec *r = (struct rec *)op;
    CHECK(!r->done); /* nothing may come after the last callback */
    CHECK(r->calls < MAXCALLS);
    r->res[r->calls] = res;
    r->flags[r->calls] = flags;
    r->buf_id[r->calls] = op->buf_id;
    if ((flags & IOP_OP_BUFFER) && r->br && res > 0) {
        CHECK((unsigned)res <= iop_bufring_size(r->br));
        CHECK((size_t)res < sizeof r->data[0]);
        memcpy(r->data[r->calls], iop_bufring_buf(r->br, op->buf_id), (size_t)res);
    }
    r->calls++;
    if (!(flags & IOP_OP_MORE))
        r->done = 1;
}

static void expire_cb(iop_timer *t)
{
    *(int *)t->data = 1;
}

/* Run until *count >= n, failing after timeout_ms. */
#define RUN_UNTIL_N(l, count, n, timeout_ms)                                                       \
    do {                                                                                           \
        if (!run_until_n((l), (count), (n), (timeout_ms)))                                         \
            iop_test_fail(__FILE__, __LINE__, "timed out waiting for %s >= %d (is %d)", #count,    \
                          (int)(n), *(count));                                                     \
    } while (0)

static int run_until_n(iop_loop *l, const int *count, int n, int timeout_ms)
{
    int expired = 0;
    iop_timer guard;
    iop_timer_init(&guard, expire_cb);
    guard.data = &expired;
    CHECK_OK(iop_timer_start(l, &guard, (uint64_t)timeout_ms, 0));
    while (*count < n && !expired)
        CHECK(iop_loop_run(l, IOP_RUN_ONCE) >= 0);
    iop_timer_stop(&guard);
    return *count >= n;
}

/* A few non-blocking iterations with a pause between them. */
static void spin(iop_loop *l, int ms)
{
    long long end = iop_test_now_ms() + ms;
    while (iop_test_now_ms() < end) {
        CHECK(iop_loop_run(l, IOP_RUN_NOWAIT) >= 0);
        usleep(1000);
    }
}

/* ---- readiness backends refuse ---------------------------------------- */

IOP_TEST(ops_unsupported_without_completion, be)
{
    if (be->kind == IOP_BACKEND_URING)
        IOP_SKIP("the uring backend has completion ops");
    iop_loop *l = iop_test_loop(be);
    CHECK(!(iop_loop_caps(l) & IOP_CAP_COMPLETION));
    CHECK(!(iop_loop_caps(l) & IOP_CAP_MULTISHOT));
    int sv[2], p[2];
    pair(sv);
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    struct rec r = {0};
    char buf[16] = "x";
    struct iovec iov = {buf, sizeof buf};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};

    CHECK_EQ(iop_op_accept(l, &r.op, sv[0], 0, rec_cb), -ENOTSUP);
    CHECK_EQ(iop_op_accept(l, &r.op, sv[0], 1, rec_cb), -ENOTSUP);
    CHECK_EQ(iop_op_recv(l, &r.op, sv[0], buf, sizeof buf, rec_cb), -ENOTSUP);
    CHECK_EQ(iop_op_recv_multishot(l, &r.op, sv[0], NULL, rec_cb), -ENOTSUP);
    CHECK_EQ(iop_op_send(l, &r.op, sv[0], buf, 1, 0, rec_cb), -ENOTSUP);
    CHECK_EQ(iop_op_sendmsg(l, &r.op, sv[0], &msg, 0, rec_cb), -ENOTSUP);
    CHECK_EQ(iop_op_recvmsg(l, &r.op, sv[0], &msg, 0, rec_cb), -ENOTSUP);
    CHECK_EQ(iop_op_splice(l, &r.op, p[0], -1, sv[0], -1, 1, 0, rec_cb), -ENOTSUP);
    CHECK_EQ(iop_op_splice(l, &r.op, p[0], -1, sv[0], -1, 1, IOP_OP_LINK, rec_cb), -ENOTSUP);
    CHECK_EQ(iop_op_close(l, &r.op, p[0], rec_cb), -ENOTSUP);
    CHECK_EQ(iop_op_poll(l, &r.op, sv[0], POLLOUT, rec_cb), -ENOTSUP);
    /* Never in flight, so nothing to cancel (the op names no loop). */
    CHECK_EQ(iop_op_cancel(&r.op), -EINVAL);

    iop_bufring *br = NULL;
    CHECK_EQ(iop_bufring_new(l, 8, 64, &br), -ENOTSUP);
    CHECK(br == NULL);

    /* A failed call does nothing: no callback, no active op, fd still open,
     * nothing sent. */
    CHECK_EQ(iop_loop_alive(l), 0);
    CHECK_EQ(iop_loop_run(l, IOP_RUN_NOWAIT), 0);
    spin(l, 10);
    CHECK_EQ(r.calls, 0);
    CHECK(is_open(p[0]));
    CHECK_EQ(read(sv[1], buf, sizeof buf), -1);
    CHECK_EQ(errno, EAGAIN);

    close_pair(p);
    close_pair(sv);
    iop_test_loop_free(l);
}

/* ---- accept ------------------------------------------------------------ */

static void check_accepted(int fd)
{
    CHECK(fd >= 0);
    int fl = fcntl(fd, F_GETFL);
    CHECK(fl >= 0 && (fl & O_NONBLOCK));
    int fdfl = fcntl(fd, F_GETFD);
    CHECK(fdfl >= 0 && (fdfl & FD_CLOEXEC));
}

IOP_TEST(op_accept_single, be)
{
    iop_loop *l = uring_loop(be);
    struct sockaddr_in addr;
    int lfd = tcp_listener(&addr);
    struct rec r = {0};
    CHECK_OK(iop_op_accept(l, &r.op, lfd, 0, rec_cb));
    CHECK_EQ(iop_loop_alive(l), 1);
    /* Nobody connects yet: the op waits (a nonblocking listener must not
     * turn into a -EAGAIN completion). */
    spin(l, 20);
    CHECK_EQ(r.calls, 0);
    int c = tcp_connect(&addr);
    RUN_UNTIL_N(l, &r.calls, 1, 2000);
    CHECK(r.done);
    CHECK(!(r.flags[0] & IOP_OP_MORE));
    check_accepted(r.res[0]);
    CHECK_EQ(iop_loop_alive(l), 0);

    /* The accepted fd is the server side of c. */
    CHECK_EQ(write(c, "hi", 2), 2);
    char b[4];
    usleep(1000);
    CHECK_EQ(read(r.res[0], b, sizeof b), 2);
    CHECK(!memcmp(b, "hi", 2));

    close(r.res[0]);
    close(c);
    close(lfd);
    iop_test_loop_free(l);
}

IOP_TEST(op_accept_multishot_then_cancel, be)
{
    iop_loop *l = uring_loop(be);
    struct sockaddr_in addr;
    int lfd = tcp_listener(&addr);
    struct rec r = {0};
    CHECK_OK(iop_op_accept(l, &r.op, lfd, 1, rec_cb));
    int c[3];
    for (int i = 0; i < 3; i++)
        c[i] = tcp_connect(&addr);
    RUN_UNTIL_N(l, &r.calls, 3, 2000);
    spin(l, 10);
    CHECK_EQ(r.calls, 3);
    for (int i = 0; i < 3; i++) {
        CHECK(r.flags[i] & IOP_OP_MORE); /* still armed */
        check_accepted(r.res[i]);
    }
    CHECK(!r.done);
    CHECK_EQ(iop_loop_alive(l), 1);
    CHECK_EQ(iop_loop_free(l), -EBUSY); /* an op is in flight */

    CHECK_OK(iop_op_cancel(&r.op));
    RUN_UNTIL_N(l, &r.done, 1, 2000);
    CHECK_EQ(r.calls, 4);
    CHECK_EQ(r.res[3], -ECANCELED);
    CHECK(!(r.flags[3] & IOP_OP_MORE));
    CHECK_EQ(iop_loop_alive(l), 0);
    CHECK_EQ(iop_op_cancel(&r.op), -EINVAL); /* no longer in flight */

    for (int i = 0; i < 3; i++) {
        close(r.res[i]);
        close(c[i]);
    }
    close(lfd);
    iop_test_loop_free(l);
}

/* ---- recv, send -------------------------------------------------------- */

IOP_TEST(op_recv_into_buffer, be)
{
    iop_loop *l = uring_loop(be);
    int sv[2];
    pair(sv);
    struct rec r = {0};
    char buf[64];
    memset(buf, 0, sizeof buf);
    CHECK_OK(iop_op_recv(l, &r.op, sv[0], buf, sizeof buf, rec_cb));
    spin(l, 10);
    CHECK_EQ(r.calls, 0); /* no data: it waits */
    CHECK_EQ(write(sv[1], "hello", 5), 5);
    RUN_UNTIL_N(l, &r.done, 1, 2000);
    CHECK_EQ(r.calls, 1);
    CHECK_EQ(r.res[0], 5);
    CHECK_EQ(r.flags[0], 0);
    CHECK(!memcmp(buf, "hello", 5));

    /* Re-arm the same op: the peer's close reads as 0 (EOF). */
    memset(&r, 0, sizeof r);
    CHECK_OK(iop_op_recv(l, &r.op, sv[0], buf, sizeof buf, rec_cb));
    close(sv[1]);
    RUN_UNTIL_N(l, &r.done, 1, 2000);
    CHECK_EQ(r.res[0], 0);
    close(sv[0]);
    iop_test_loop_free(l);
}

IOP_TEST(op_send, be)
{
    iop_loop *l = uring_loop(be);
    int sv[2];
    pair(sv);
    struct rec r = {0};
    static const char payload[] = "payload";
    CHECK_OK(iop_op_send(l, &r.op, sv[0], payload, 7, 0, rec_cb));
    RUN_UNTIL_N(l, &r.done, 1, 2000);
    CHECK_EQ(r.calls, 1);
    CHECK_EQ(r.res[0], 7);
    char b[16];
    CHECK_EQ(read(sv[1], b, sizeof b), 7);
    CHECK(!memcmp(b, payload, 7));
    close_pair(sv);
    iop_test_loop_free(l);
}

/* Send until the kernel says the peer is gone; returns that error. */
static int send_until_error(iop_loop *l, int fd)
{
    static const char x[1024] = {0};
    for (int i = 0; i < 100; i++) {
        struct rec r = {0};
        CHECK_OK(iop_op_send(l, &r.op, fd, x, sizeof x, 0, rec_cb));
        RUN_UNTIL_N(l, &r.done, 1, 2000);
        if (r.res[0] < 0)
            return r.res[0];
        usleep(1000); /* let the peer's RST come back */
    }
    return 0;
}

IOP_TEST(op_send_to_closed_peer_no_sigpipe, be)
{
    iop_loop *l = uring_loop(be);
    /* The runner ignores SIGPIPE; a server may not.  MSG_NOSIGNAL must keep
     * the default action (death) from happening. */
    struct sigaction dfl, old;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    CHECK(sigaction(SIGPIPE, &dfl, &old) == 0);

    int sv[2];
    pair(sv);
    close(sv[1]);
    int rc = send_until_error(l, sv[0]);
    CHECK(rc == -EPIPE || rc == -ECONNRESET);
    close(sv[0]);

    int t[2];
    tcp_pair(t);
    close(t[1]);
    rc = send_until_error(l, t[0]);
    CHECK(rc == -EPIPE || rc == -ECONNRESET);
    close(t[0]);

    CHECK(sigaction(SIGPIPE, &old, NULL) == 0);
    iop_test_loop_free(l);
}

IOP_TEST(op_sendmsg_iovecs, be)
{
    iop_loop *l = uring_loop(be);
    int sv[2];
    pair(sv);
    char a[5] = "alpha", b[1000], c[3] = {'\0', '\xff', 'z'};
    for (size_t i = 0; i < sizeof b; i++)
        b[i] = (char)(i * 7 + 1);
    struct iovec iov[3] = {{a, sizeof a}, {b, sizeof b}, {c, sizeof c}};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 3};
    struct rec r = {0};
    CHECK_OK(iop_op_sendmsg(l, &r.op, sv[0], &msg, 0, rec_cb));
    RUN_UNTIL_N(l, &r.done, 1, 2000);
    CHECK_EQ(r.res[0], sizeof a + sizeof b + sizeof c);

    char got[2048];
    ssize_t n = read(sv[1], got, sizeof got);
    CHECK_EQ(n, r.res[0]);
    CHECK(!memcmp(got, a, sizeof a));
    CHECK(!memcmp(got + sizeof a, b, sizeof b));
    CHECK(!memcmp(got + sizeof a + sizeof b, c, sizeof c));
    close_pair(sv);
    iop_test_loop_free(l);
}

static int udp_socket(struct sockaddr_in *addr)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(fd, (struct sockaddr *)addr, sizeof *addr) == 0);
    socklen_t len = sizeof *addr;
    CHECK(getsockname(fd, (struct sockaddr *)addr, &len) == 0);
    return fd;
}

IOP_TEST(op_recvmsg_udp_source_address, be)
{
    iop_loop *l = uring_loop(be);
    struct sockaddr_in aaddr, baddr;
    int a = udp_socket(&aaddr), b = udp_socket(&baddr);
    static const char *dgrams[] = {"datagram", "xy"};
    for (int i = 0; i < 2; i++) {
        struct sockaddr_in from;
        memset(&from, 0, sizeof from);
        char buf[64];
        struct iovec iov = {buf, sizeof buf};
        struct msghdr msg = {
            .msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1};
        struct rec r = {0};
        CHECK_OK(iop_op_recvmsg(l, &r.op, b, &msg, 0, rec_cb));
        spin(l, 5);
        CHECK_EQ(r.calls, 0);
        size_t len = strlen(dgrams[i]);
        CHECK_EQ(sendto(a, dgrams[i], len, 0, (struct sockaddr *)&baddr, sizeof baddr), len);
        RUN_UNTIL_N(l, &r.done, 1, 2000);
        CHECK_EQ(r.res[0], len); /* one datagram, its own length */
        CHECK(!memcmp(buf, dgrams[i], len));
        CHECK(!(msg.msg_flags & MSG_TRUNC));
        CHECK_EQ(msg.msg_namelen, sizeof from);
        CHECK_EQ(from.sin_family, AF_INET);
        CHECK_EQ(from.sin_port, aaddr.sin_port);
        CHECK_EQ(from.sin_addr.s_addr, htonl(INADDR_LOOPBACK));
    }
    close(a);
    close(b);
    iop_test_loop_free(l);
}

/* ---- splice: file -> pipe -> socket ------------------------------------ */

#define SPLICE_SIZE  (4 * 1024 * 1024 + 13)
#define SPLICE_CHUNK (64 * 1024)

static unsigned char pattern(int64_t i)
{
    /* Not periodic at any power of two a chunking bug would hide behind. */
    return (unsigned char)(i * 131 + (i >> 9) * 7 + (i >> 17));
}

struct sendfile {
    iop_loop *l;
    iop_op in, out; /* file -> pipe (linked), pipe -> socket */
    int file, pipe[2], sock;
    int64_t off, size;
    int64_t in_pipe; /* bytes spliced into the pipe, not yet out of it */
    int pending;     /* ops in flight */
    int err;
    int sent_all;
    iop_io reader;
    int64_t got;
    int finished;
};

static void sf_step(struct sendfile *s);

static void sf_check_finished(struct sendfile *s)
{
    s->finished = s->err || (s->sent_all && s->got == s->size);
}

static void sf_in_cb(iop_op *op, int res, unsigned flags)
{
    struct sendfile *s = op->data;
    CHECK(!(flags & IOP_OP_MORE));
    s->pending--;
    if (res > 0) {
        s->off += res;
        s->in_pipe += res;
    } else {
        s->err = res ? res : -EIO; /* 0: the file ended early */
    }
    sf_step(s);
}

static void sf_out_cb(iop_op *op, int res, unsigned flags)
{
    struct sendfile *s = op->data;
    CHECK(!(flags & IOP_OP_MORE));
    s->pending--;
    if (res > 0)
        s->in_pipe -= res;
    else if (res != -ECANCELED) /* -ECANCELED: a short splice in broke the link */
        s->err = res ? res : -EIO;
    sf_step(s);
}

/* Queue the next splice(s) once both of the last ones are done. */
static void sf_step(struct sendfile *s)
{
    if (s->pending || s->err) {
        sf_check_finished(s);
        return;
    }
    if (s->in_pipe > 0) {
        /* The socket took less than the pipe held: drain the pipe first. */
        CHECK_OK(iop_op_splice(s->l, &s->out, s->pipe[0], -1, s->sock, -1, (size_t)s->in_pipe, 0,
                               sf_out_cb));
        s->pending = 1;
    } else if (s->off < s->size) {
        int64_t left = s->size - s->off;
        size_t n = left < SPLICE_CHUNK ? (size_t)left : SPLICE_CHUNK;
        CHECK_OK(
            iop_op_splice(s->l, &s->in, s->file, s->off, s->pipe[1], -1, n, IOP_OP_LINK, sf_in_cb));
        CHECK_OK(iop_op_splice(s->l, &s->out, s->pipe[0], -1, s->sock, -1, n, 0, sf_out_cb));
        s->pending = 2;
    } else {
        s->sent_all = 1;
    }
    sf_check_finished(s);
}

static void sf_read_cb(iop_io *w, unsigned revents)
{
    struct sendfile *s = w->data;
    unsigned char buf[16384];
    ssize_t n;
    (void)revents;
    while ((n = read(w->fd, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != pattern(s->got + i))
                iop_test_fail(__FILE__, __LINE__, "byte %lld: %u != %u", (long long)(s->got + i),
                              buf[i], pattern(s->got + i));
        s->got += n;
        CHECK(s->got <= s->size);
    }
    CHECK(n < 0 && errno == EAGAIN); /* no EOF: the sender stays open */
    sf_check_finished(s);
}

static int make_file(int64_t size)
{
    char path[] = "/tmp/ioplex-splice-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK(unlink(path) == 0);
    unsigned char *buf = malloc((size_t)size);
    CHECK(buf);
    for (int64_t i = 0; i < size; i++)
        buf[i] = pattern(i);
    CHECK_EQ(write(fd, buf, (size_t)size), size);
    free(buf);
    return fd;
}

IOP_TEST(op_splice_file_to_socket_linked, be)
{
    iop_loop *l = uring_loop(be);
    struct sendfile s = {0};
    s.l = l;
    s.size = SPLICE_SIZE;
    s.file = make_file(s.size);
    CHECK(pipe2(s.pipe, O_CLOEXEC) == 0);
    int t[2];
    tcp_pair(t);
    s.sock = t[0];
    /* Small socket buffers: the file is many times larger, so the splices
     * into the socket must wait for the reader again and again. */
    int small = 32768;
    CHECK(setsockopt(t[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    CHECK(setsockopt(t[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    s.in.data = s.out.data = &s;

    iop_io_init(&s.reader, t[1], sf_read_cb);
    s.reader.data = &s;
    CHECK_OK(iop_io_start(l, &s.reader, IOP_READ));
    sf_step(&s);
    iop_test_run_until(l, &s.finished, 10000);
    if (s.err)
        iop_test_fail(__FILE__, __LINE__, "splice: %s", iop_strerror(s.err));
    CHECK_EQ(s.got, s.size);
    CHECK_EQ(s.off, s.size);
    CHECK_EQ(s.in_pipe, 0);
    CHECK_EQ(s.pending, 0);
    iop_io_stop(&s.reader);
    CHECK_EQ(iop_loop_alive(l), 0);

    /* Not one byte more. */
    char b;
    CHECK_EQ(read(t[1], &b, 1), -1);
    CHECK_EQ(errno, EAGAIN);

    close_pair(t);
    close_pair(s.pipe);
    close(s.file);
    iop_test_loop_free(l);
}

/* ---- close, cancel ----------------------------------------------------- */

/* A one-shot readiness request: it waits while the fd is not ready, and
 * its result is the revents mask. */
IOP_TEST(op_poll_readiness, be)
{
    iop_loop *l = uring_loop(be);
    int sv[2];
    pair(sv);
    struct rec r = {0};
    CHECK_OK(iop_op_poll(l, &r.op, sv[0], POLLIN, rec_cb));
    CHECK_EQ(iop_op_poll(l, &r.op, sv[0], POLLIN, rec_cb), -EBUSY);
    spin(l, 20);
    CHECK_EQ(r.calls, 0);
    CHECK_EQ(write(sv[1], "x", 1), 1);
    RUN_UNTIL_N(l, &r.done, 1, 2000);
    CHECK_EQ(r.calls, 1);
    CHECK(r.res[0] & POLLIN);
    CHECK(!(r.flags[0] & IOP_OP_MORE));
    CHECK_EQ(iop_loop_alive(l), 0);
    close_pair(sv);
    iop_test_loop_free(l);
}

IOP_TEST(op_close_closes_fd, be)
{
    iop_loop *l = uring_loop(be);
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    struct rec r = {0};
    CHECK_OK(iop_op_close(l, &r.op, p[0], rec_cb));
    RUN_UNTIL_N(l, &r.done, 1, 2000);
    CHECK_EQ(r.res[0], 0);
    CHECK_EQ(fcntl(p[0], F_GETFD), -1);
    CHECK_EQ(errno, EBADF);
    /* The read end is gone from the file too, not just the table: the pipe
     * has no reader left. */
    CHECK_EQ(write(p[1], "x", 1), -1);
    CHECK_EQ(errno, EPIPE);
    close(p[1]);

    /* Closing a bad fd reports -EBADF through the callback. */
    memset(&r, 0, sizeof r);
    CHECK_OK(iop_op_close(l, &r.op, p[0], rec_cb));
    RUN_UNTIL_N(l, &r.done, 1, 2000);
    CHECK_EQ(r.res[0], -EBADF);
    iop_test_loop_free(l);
}

IOP_TEST(op_cancel_pending_recv, be)
{
    iop_loop *l = uring_loop(be);
    int sv[2];
    pair(sv);
    struct rec r = {0};
    char buf[16];
    CHECK_EQ(iop_op_cancel(&r.op), -EINVAL); /* never started */
    CHECK_OK(iop_op_recv(l, &r.op, sv[0], buf, sizeof buf, rec_cb));
    spin(l, 10); /* submitted and waiting in the kernel */
    CHECK_EQ(r.calls, 0);
    CHECK_EQ(iop_loop_free(l), -EBUSY);
    CHECK_OK(iop_op_cancel(&r.op));
    RUN_UNTIL_N(l, &r.done, 1, 2000);
    CHECK_EQ(r.calls, 1);
    CHECK_EQ(r.res[0], -ECANCELED);
    CHECK_EQ(r.flags[0], 0);
    CHECK_EQ(iop_loop_alive(l), 0);

    /* Data that comes later is not consumed by the cancelled recv. */
    CHECK_EQ(write(sv[1], "late", 4), 4);
    spin(l, 5);
    CHECK_EQ(r.calls, 1);
    CHECK_EQ(read(sv[0], buf, sizeof buf), 4);
    close_pair(sv);
    iop_test_loop_free(l);
}

/* ---- provided buffer rings --------------------------------------------- */

/* Send msg on fd and wait for at least one more callback of r. */
static void send_and_wait(iop_loop *l, struct rec *r, int fd, const char *msg)
{
    int before = r->calls;
    CHECK_EQ(write(fd, msg, strlen(msg)), strlen(msg));
    RUN_UNTIL_N(l, &r->calls, before + 1, 2000);
}

IOP_TEST(bufring_recv_multishot, be)
{
    iop_loop *l = uring_loop(be);
    int sv[2];
    pair(sv);
    iop_bufring *br = NULL;
    CHECK_OK(iop_bufring_new(l, 8, 64, &br));
    CHECK(br != NULL);
    CHECK_EQ(iop_bufring_size(br), 64);
    CHECK(iop_bufring_buf(br, 7) != NULL);
    CHECK(iop_bufring_buf(br, 8) == NULL);
    struct rec r = {.br = br};
    int rc = iop_op_recv_multishot(l, &r.op, sv[0], br, rec_cb);
    if (rc == -ENOTSUP) {
        iop_bufring_free(br);
        close_pair(sv);
        iop_test_loop_free(l);
        IOP_SKIP("multishot recv needs Linux 6.0");
    }
    CHECK_OK(rc);

    /* Buffers given back each time: the op keeps going past the ring size. */
    char msg[32];
    for (int i = 0; i < 10; i++) {
        snprintf(msg, sizeof msg, "message %d", i);
        send_and_wait(l, &r, sv[1], msg);
        CHECK_EQ(r.calls, i + 1);
        CHECK_EQ(r.res[i], strlen(msg));
        CHECK(r.flags[i] & IOP_OP_BUFFER);
        CHECK(r.flags[i] & IOP_OP_MORE);
        CHECK(r.buf_id[i] < 8);
        CHECK(!memcmp(r.data[i], msg, strlen(msg)));
        /* The buffer itself holds the data until it is put back. */
        CHECK(!memcmp(iop_bufring_buf(br, r.buf_id[i]), msg, strlen(msg)));
        iop_bufring_put(br, r.buf_id[i]);
    }
    CHECK(!r.done);

    /* Keep every buffer: once all 8 are held the op ends with -ENOBUFS.
     * The kernel may end it as soon as the ring is empty or only when the
     * next data finds no buffer; either way at most 8 more come. */
    int first = r.calls, sent = 0;
    while (!r.done && sent < 12) {
        snprintf(msg, sizeof msg, "held %d", sent);
        send_and_wait(l, &r, sv[1], msg);
        sent++;
    }
    CHECK(r.done);
    int last = r.calls - 1;
    CHECK_EQ(r.res[last], -ENOBUFS);
    CHECK(!(r.flags[last] & IOP_OP_MORE));
    CHECK_EQ(last - first, 8); /* exactly the ring's worth of data */
    unsigned seen = 0;
    for (int i = first; i < last; i++) {
        snprintf(msg, sizeof msg, "held %d", i - first);
        CHECK_EQ(r.res[i], strlen(msg));
        CHECK(r.flags[i] & IOP_OP_BUFFER);
        CHECK(!memcmp(r.data[i], msg, strlen(msg)));
        CHECK(!(seen & (1u << r.buf_id[i]))); /* 8 different buffers */
        seen |= 1u << r.buf_id[i];
    }
    CHECK_EQ(iop_loop_alive(l), 0);

    /* Give them back and arm again: what the socket still holds comes
     * first, then new data. */
    for (int i = first; i < last; i++)
        iop_bufring_put(br, r.buf_id[i]);
    struct rec r3 = {.br = br};
    CHECK_OK(iop_op_recv_multishot(l, &r3.op, sv[0], br, rec_cb));
    char want[64] = "";
    if (sent > 8)
        snprintf(want, sizeof want, "held %d", sent - 1);
    strcat(want, "again");
    CHECK_EQ(write(sv[1], "again", 5), 5);
    int got = 0;
    char all[64];
    while (got < (int)strlen(want)) {
        int before = r3.calls;
        RUN_UNTIL_N(l, &r3.calls, before + 1, 2000);
        for (int i = before; i < r3.calls; i++) {
            CHECK(r3.flags[i] & IOP_OP_BUFFER);
            CHECK(r3.flags[i] & IOP_OP_MORE);
            CHECK(got + r3.res[i] <= (int)strlen(want));
            memcpy(all + got, r3.data[i], (size_t)r3.res[i]);
            got += r3.res[i];
            iop_bufring_put(br, r3.buf_id[i]);
        }
    }
    CHECK(!memcmp(all, want, strlen(want)));

    CHECK_OK(iop_op_cancel(&r3.op));
    RUN_UNTIL_N(l, &r3.done, 1, 2000);
    CHECK_EQ(r3.res[r3.calls - 1], -ECANCELED);
    CHECK_EQ(iop_loop_alive(l), 0);
    iop_bufring_free(br);
    close_pair(sv);
    iop_test_loop_free(l);
}

IOP_TEST(op_bad_arguments, be)
{
    iop_loop *l = uring_loop(be);
    iop_bufring *br = NULL;
    CHECK_EQ(iop_bufring_new(l, 6, 64, &br), -EINVAL);
    CHECK_EQ(iop_bufring_new(l, 0, 64, &br), -EINVAL);
    CHECK_EQ(iop_bufring_new(l, 65536, 64, &br), -EINVAL);
    CHECK_EQ(iop_bufring_new(l, 8, 0, &br), -EINVAL);
    CHECK(br == NULL);

    int sv[2];
    pair(sv);
    struct rec r = {0};
    char buf[16], other[16];
    CHECK_EQ(iop_op_recv(l, &r.op, sv[0], buf, sizeof buf, NULL), -EINVAL);
    CHECK_EQ(iop_op_recv_multishot(l, &r.op, sv[0], NULL, rec_cb), -EINVAL);
    CHECK_EQ(iop_loop_alive(l), 0);

    /* An op in flight cannot be queued again, and the failed call leaves the
     * first one alone. */
    CHECK_OK(iop_op_recv(l, &r.op, sv[0], buf, sizeof buf, rec_cb));
    CHECK_EQ(iop_op_recv(l, &r.op, sv[0], other, sizeof other, rec_cb), -EBUSY);
    CHECK_EQ(iop_op_send(l, &r.op, sv[0], "x", 1, 0, rec_cb), -EBUSY);
    CHECK_EQ(iop_op_close(l, &r.op, sv[0], rec_cb), -EBUSY);
    CHECK_EQ(iop_loop_alive(l), 1);
    CHECK_EQ(write(sv[1], "ok", 2), 2);
    RUN_UNTIL_N(l, &r.done, 1, 2000);
    CHECK_EQ(r.calls, 1);
    CHECK_EQ(r.res[0], 2);
    CHECK(!memcmp(buf, "ok", 2));
    CHECK(is_open(sv[0]));

    /* A ring made for another loop is refused. */
    iop_loop *l2 = iop_test_loop(be);
    CHECK_OK(iop_bufring_new(l2, 8, 64, &br));
    memset(&r, 0, sizeof r);
    int rc = iop_op_recv_multishot(l, &r.op, sv[0], br, rec_cb);
    CHECK(rc == -EINVAL || rc == -ENOTSUP);
    iop_bufring_free(br);
    iop_test_loop_free(l2);

    close_pair(sv);
    iop_test_loop_free(l);
}

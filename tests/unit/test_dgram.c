/* test_dgram.c - UDP datagram handles (iop_dgram), run once per backend
 * variant: readiness (recvmmsg/sendmmsg) on select, poll and epoll LT/ET,
 * completion (recvmsg/sendmsg requests) on io_uring.
 *
 * Loopback UDP drops only when a receive buffer overflows, so every socket
 * gets a large SO_RCVBUF, and bursts are cut to what it surely holds. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ioplex/stream.h"
#include "runner.h"
#include "stream/dgram_int.h" /* white-box: is receive memory freed? */

#define BIG_SOCKBUF (4 << 20)
#define MAX_SEQ     1000
#define WAIT_MS     5000

static char rxbuf[65536 + 16];
static char txbuf[65536];

/* ---- sockets ----------------------------------------------------------- */

/* A UDP socket bound to the loopback address of family on a free port, its
 * address in *sa; -1 when the family is not available (IPv6). */
static int udp_socket(int family, struct sockaddr_storage *sa, socklen_t *len)
{
    int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(sa, 0, sizeof *sa);
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)sa;
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        *len = sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
        in6->sin6_family = AF_INET6;
        in6->sin6_addr = in6addr_loopback;
        *len = sizeof *in6;
    }
    if (bind(fd, (struct sockaddr *)sa, *len) < 0) {
        close(fd);
        return -1;
    }
    CHECK(getsockname(fd, (struct sockaddr *)sa, len) == 0);
    int big = BIG_SOCKBUF;
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    return fd;
}

static int port_of(const struct sockaddr_storage *sa)
{
    if (sa->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)sa)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
}

/* How many small datagrams fd surely holds unread: all of a burst of 1000
 * with the large buffer, else bursts of 100 (net.core.rmem_max too low). */
static int burst_size(int fd)
{
    int rcv = 0;
    socklen_t len = sizeof rcv;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, &len) == 0);
    return rcv >= (2 << 20) ? 1000 : 100;
}

static void send_to(int fd, const void *buf, size_t len, const struct sockaddr_storage *to,
                    socklen_t tolen)
{
    for (;;) {
        ssize_t n = sendto(fd, buf, len, 0, (const struct sockaddr *)to, tolen);
        if (n >= 0) {
            CHECK_EQ(n, (ssize_t)len);
            return;
        }
        CHECK(errno == EAGAIN || errno == EINTR);
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        CHECK(poll(&p, 1, WAIT_MS) == 1);
    }
}

/* A few loop iterations without blocking long: to see that nothing comes. */
static void spin(iop_loop *l, int ms)
{
    long long end = iop_test_now_ms() + ms;
    while (iop_test_now_ms() < end) {
        CHECK(iop_loop_run(l, IOP_RUN_NOWAIT) >= 0);
        usleep(1000);
    }
}

static void tick_cb(iop_timer *t)
{
    (void)t;
}

/* iop_test_run_until, but never blocked longer than a 5 ms tick per
 * iteration: flags set by deferred callbacks (on_close, datagrams held
 * across a recv_stop) are seen at once rather than at the guard timer. */
static void run_until(iop_loop *l, const int *flag, int timeout_ms)
{
    iop_timer tick;
    iop_timer_init(&tick, tick_cb);
    CHECK_OK(iop_timer_start(l, &tick, 5, 5));
    long long end = iop_test_now_ms() + timeout_ms;
    while (!*flag && iop_test_now_ms() < end)
        CHECK(iop_loop_run(l, IOP_RUN_ONCE) >= 0);
    iop_timer_stop(&tick);
    if (!*flag)
        iop_test_fail(__FILE__, __LINE__, "timed out after %d ms", timeout_ms);
}

/* ---- payloads -----------------------------------------------------------
 * A tagged datagram starts with the sender's id and a sequence number; its
 * length and every other byte follow from them, so a reply can be checked
 * alone, in any order (io_uring may complete requests out of order). */

static size_t tagged_len(int seq)
{
    return 8 + (size_t)(seq * 37 % 500);
}

static void fill(char *buf, size_t len, int id, int seq)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (char)(id * 7 + seq * 31 + (int)i);
    if (len >= 8) {
        memcpy(buf, &id, 4);
        memcpy(buf + 4, &seq, 4);
    }
}

/* 1 if buf is datagram seq of id, first seen; marks it in seen[]. */
static int tagged_ok(const char *buf, size_t n, int id, unsigned char *seen)
{
    int gid, seq;
    if (n < 8)
        return 0;
    memcpy(&gid, buf, 4);
    memcpy(&seq, buf + 4, 4);
    if (gid != id || seq < 0 || seq >= MAX_SEQ || seen[seq] || n != tagged_len(seq))
        return 0;
    for (size_t i = 8; i < n; i++)
        if (buf[i] != (char)(id * 7 + seq * 31 + (int)i))
            return 0;
    seen[seq] = 1;
    return 1;
}

/* ---- the handle under test --------------------------------------------- */

struct server {
    iop_dgram *d;
    int echo;        /* answer each datagram to its sender */
    int verify;      /* check tagged datagrams from id 0 */
    int stop_after;  /* recv_stop inside on_recv at this count */
    int close_after; /* close inside on_recv at this count */
    int recvs, bad, errors, closes;
    int in_close;      /* iop_dgram_close is running */
    int closed_inside; /* on_close ran inside it: a bug */
    int target, done;  /* done when recvs reaches target */
    struct sockaddr_storage from;
    unsigned fromlen;
    unsigned char seen[MAX_SEQ];
};

static void server_recv(iop_dgram *d, ssize_t n, const char *buf, const struct sockaddr *from,
                        unsigned fromlen)
{
    struct server *sv = iop_dgram_data(d);
    if (n < 0) {
        sv->errors++;
        return;
    }
    sv->recvs++;
    CHECK(from != NULL);
    CHECK(fromlen > 0 && fromlen <= sizeof sv->from);
    memcpy(&sv->from, from, fromlen);
    sv->fromlen = fromlen;
    if (sv->verify && !tagged_ok(buf, (size_t)n, 0, sv->seen))
        sv->bad++;
    if (sv->echo)
        CHECK_OK(iop_dgram_send(d, buf, (size_t)n, from, fromlen));
    if (sv->stop_after && sv->recvs == sv->stop_after)
        CHECK_OK(iop_dgram_recv_stop(d));
    if (sv->close_after && sv->recvs == sv->close_after) {
        sv->in_close = 1;
        iop_dgram_close(d);
        sv->in_close = 0;
        CHECK_EQ(iop_dgram_send(d, "x", 1, from, fromlen), -EPIPE);
    }
    sv->done = sv->target && sv->recvs >= sv->target;
}

static void server_on_close(iop_dgram *d)
{
    struct server *sv = iop_dgram_data(d);
    sv->closes++;
    if (sv->in_close)
        sv->closed_inside = 1;
}

/* Open sv on a fresh loopback socket of family; 0, or -1 if the family is
 * not available. */
static int server_open(iop_loop *l, struct server *sv, int family, struct iop_dgram_config cfg,
                       struct sockaddr_storage *addr, socklen_t *alen)
{
    int fd = udp_socket(family, addr, alen);
    if (fd < 0)
        return -1;
    cfg.on_recv = server_recv;
    cfg.on_close = server_on_close;
    CHECK_OK(iop_dgram_open(l, fd, &cfg, &sv->d));
    iop_dgram_set_data(sv->d, sv);
    CHECK_EQ(iop_dgram_data(sv->d), sv);
    CHECK_EQ(iop_dgram_fd(sv->d), fd);
    return 0;
}

/* Close from outside any callback: on_close comes later, exactly once. */
static void server_close(iop_loop *l, struct server *sv)
{
    sv->in_close = 1;
    iop_dgram_close(sv->d);
    iop_dgram_close(sv->d); /* a second close is a no-op */
    sv->in_close = 0;
    CHECK_EQ(sv->closes, 0);
    run_until(l, &sv->closes, WAIT_MS);
    spin(l, 5);
    CHECK_EQ(sv->closes, 1);
    CHECK(!sv->closed_inside);
}

/* ---- raw clients ------------------------------------------------------- */

struct tally {
    int got, expect, done;
};

struct client {
    iop_io io;
    int fd, id;
    struct sockaddr_storage addr;
    socklen_t alen;
    struct tally *tally;
    int got, bad;
    /* ping-pong: the one reply expected next; else tagged datagrams */
    const char *want;
    size_t want_len;
    unsigned char seen[MAX_SEQ];
};

static void client_cb(iop_io *w, unsigned revents)
{
    struct client *c = (struct client *)w;
    ssize_t n;
    (void)revents;
    /* To EAGAIN: edge loops report each arrival once. */
    while ((n = recv(w->fd, rxbuf, sizeof rxbuf, MSG_TRUNC)) >= 0) {
        if (c->want)
            c->bad += (size_t)n != c->want_len || memcmp(rxbuf, c->want, (size_t)n) != 0;
        else
            c->bad += !tagged_ok(rxbuf, (size_t)n, c->id, c->seen);
        c->got++;
        c->tally->got++;
    }
    CHECK(errno == EAGAIN);
    c->tally->done = c->tally->got >= c->tally->expect;
}

static void client_open(iop_loop *l, struct client *c, int family, int id, struct tally *t)
{
    memset(c, 0, sizeof *c);
    c->fd = udp_socket(family, &c->addr, &c->alen);
    CHECK(c->fd >= 0);
    c->id = id;
    c->tally = t;
    iop_io_init(&c->io, c->fd, client_cb);
    CHECK_OK(iop_io_start(l, &c->io, IOP_READ));
}

static void client_close(struct client *c)
{
    iop_io_stop(&c->io);
    close(c->fd);
}

static void send_tagged(struct client *c, int seq, const struct sockaddr_storage *to,
                        socklen_t tolen)
{
    size_t len = tagged_len(seq);
    fill(txbuf, len, c->id, seq);
    send_to(c->fd, txbuf, len, to, tolen);
}

/* ---- echo, byte-exact -------------------------------------------------- */

static const size_t sizes[] = {0, 1, 2, 3, 7, 64, 512, 1400, 1472, 1473, 4096, 9000, 16384, 65507};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static void echo_sizes(const struct iop_test_backend *be, int family)
{
    iop_loop *l = iop_test_loop(be);
    struct server sv = {.echo = 1};
    struct sockaddr_storage sa;
    socklen_t salen;
    if (server_open(l, &sv, family, (struct iop_dgram_config){0}, &sa, &salen) < 0) {
        iop_test_loop_free(l);
        IOP_SKIP("no loopback address for this family");
    }
    CHECK_OK(iop_dgram_recv_start(sv.d));
    CHECK_OK(iop_dgram_recv_start(sv.d)); /* started already: no-op */
    struct tally t = {0};
    struct client c;
    client_open(l, &c, family, 1, &t);
    for (int i = 0; i < 200; i++) {
        size_t len = sizes[(size_t)i % NSIZES];
        fill(txbuf, len, 1, i);
        c.want = txbuf;
        c.want_len = len;
        t.expect = i + 1;
        t.done = 0;
        send_to(c.fd, txbuf, len, &sa, salen);
        run_until(l, &t.done, WAIT_MS);
        CHECK_EQ(c.got, i + 1); /* one reply per datagram: never merged or split */
        CHECK_EQ(c.bad, 0);
    }
    /* The source address handed to on_recv is the client's. */
    CHECK_EQ(sv.fromlen, c.alen);
    CHECK_EQ(sv.from.ss_family, family);
    CHECK_EQ(port_of(&sv.from), port_of(&c.addr));
    CHECK_EQ(sv.recvs, 200);
    CHECK_EQ(iop_dgram_dropped(sv.d), 0);
    CHECK_EQ(sv.errors, 0);
    server_close(l, &sv);
    client_close(&c);
    iop_test_loop_free(l);
}

IOP_TEST(echo_sizes_ipv4, be)
{
    echo_sizes(be, AF_INET);
}

IOP_TEST(echo_sizes_ipv6, be)
{
    echo_sizes(be, AF_INET6);
}

/* ---- batches ----------------------------------------------------------- */

/* 1000 datagrams already queued in the kernel when the loop first runs:
 * recvmmsg / several recvmsg requests take them in batches, and the 1000
 * replies leave in sendmmsg batches.  Odd batch sizes on purpose. */
IOP_TEST(burst_of_1000, be)
{
    static const unsigned batches[] = {0, 1, 7, 64};
    for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
        iop_loop *l = iop_test_loop(be);
        struct server sv = {.echo = 1};
        struct sockaddr_storage sa;
        socklen_t salen;
        struct iop_dgram_config cfg = {.batch = batches[b], .max_size = 2048};
        CHECK(server_open(l, &sv, AF_INET, cfg, &sa, &salen) == 0);
        CHECK_OK(iop_dgram_recv_start(sv.d));
        struct tally t = {0};
        struct client c;
        client_open(l, &c, AF_INET, 3, &t);
        int burst = burst_size(c.fd) < burst_size(iop_dgram_fd(sv.d))
                        ? burst_size(c.fd)
                        : burst_size(iop_dgram_fd(sv.d));
        for (int seq = 0; seq < MAX_SEQ;) {
            int end = seq + burst;
            for (; seq < end; seq++)
                send_tagged(&c, seq, &sa, salen);
            t.expect = end;
            t.done = 0;
            run_until(l, &t.done, WAIT_MS);
        }
        CHECK_EQ(c.got, MAX_SEQ);
        CHECK_EQ(c.bad, 0);
        CHECK_EQ(sv.recvs, MAX_SEQ);
        server_close(l, &sv);
        client_close(&c);
        iop_test_loop_free(l);
    }
}

/* Ten clients, their datagrams interleaved; each gets exactly its own. */
IOP_TEST(many_clients_interleaved, be)
{
    enum { NCLIENTS = 10, PER_CLIENT = 50, PER_ROUND = 10 };
    iop_loop *l = iop_test_loop(be);
    struct server sv = {.echo = 1};
    struct sockaddr_storage sa;
    socklen_t salen;
    CHECK(server_open(l, &sv, AF_INET, (struct iop_dgram_config){.batch = 8}, &sa, &salen) == 0);
    CHECK_OK(iop_dgram_recv_start(sv.d));
    struct tally t = {0};
    static struct client c[NCLIENTS];
    for (int i = 0; i < NCLIENTS; i++)
        client_open(l, &c[i], AF_INET, 100 + i, &t);
    for (int seq = 0; seq < PER_CLIENT; seq += PER_ROUND) {
        for (int k = seq; k < seq + PER_ROUND; k++)
            for (int i = 0; i < NCLIENTS; i++)
                send_tagged(&c[i], k, &sa, salen);
        t.expect = (seq + PER_ROUND) * NCLIENTS;
        t.done = 0;
        run_until(l, &t.done, WAIT_MS);
    }
    spin(l, 5);
    for (int i = 0; i < NCLIENTS; i++) {
        CHECK_EQ(c[i].got, PER_CLIENT);
        CHECK_EQ(c[i].bad, 0);
        client_close(&c[i]);
    }
    CHECK_EQ(sv.recvs, NCLIENTS * PER_CLIENT);
    server_close(l, &sv);
    iop_test_loop_free(l);
}

/* ---- receive start / stop ---------------------------------------------- */

IOP_TEST(recv_stop_stops_callbacks, be)
{
    iop_loop *l = iop_test_loop(be);
    struct server sv = {.verify = 1, .stop_after = 5};
    struct sockaddr_storage sa;
    socklen_t salen;
    CHECK(server_open(l, &sv, AF_INET, (struct iop_dgram_config){.batch = 4}, &sa, &salen) == 0);
    struct tally t = {0};
    struct client c;
    client_open(l, &c, AF_INET, 0, &t);

    /* Not started: nothing is delivered, nothing is lost. */
    for (int seq = 0; seq < 20; seq++)
        send_tagged(&c, seq, &sa, salen);
    spin(l, 20);
    CHECK_EQ(sv.recvs, 0);

    /* Stopped inside on_recv at 5: at once, even mid-batch. */
    CHECK_OK(iop_dgram_recv_start(sv.d));
    sv.target = 5;
    run_until(l, &sv.done, WAIT_MS);
    spin(l, 30);
    CHECK_EQ(sv.recvs, 5);

    /* Started again: the other 15, none twice, none lost. */
    sv.stop_after = 0;
    sv.target = 20;
    sv.done = 0;
    CHECK_OK(iop_dgram_recv_start(sv.d));
    run_until(l, &sv.done, WAIT_MS);

    /* Stopped from outside a callback. */
    CHECK_OK(iop_dgram_recv_stop(sv.d));
    CHECK_OK(iop_dgram_recv_stop(sv.d)); /* stopped already: no-op */
    for (int seq = 20; seq < 30; seq++)
        send_tagged(&c, seq, &sa, salen);
    spin(l, 30);
    CHECK_EQ(sv.recvs, 20);
    sv.target = 30;
    sv.done = 0;
    CHECK_OK(iop_dgram_recv_start(sv.d));
    run_until(l, &sv.done, WAIT_MS);
    spin(l, 5);
    CHECK_EQ(sv.recvs, 30);

    /* Receive buffers exist only while receiving (or while datagrams taken
     * from the kernel wait for a restart). */
    CHECK(sv.d->rb || sv.d->slots);
    CHECK_OK(iop_dgram_recv_stop(sv.d));
    spin(l, 20);
    CHECK(!sv.d->rb && !sv.d->slots && !sv.d->bufs);
    /* The client's watcher, and on readiness the handle's own; io_uring has
     * no request left in flight. */
    CHECK_EQ(iop_loop_alive(l), (iop_loop_caps(l) & IOP_CAP_COMPLETION) ? 1 : 2);
    CHECK_EQ(sv.bad, 0);
    CHECK_EQ(sv.errors, 0);
    server_close(l, &sv);
    client_close(&c);
    iop_test_loop_free(l);
}

/* ---- sending ------------------------------------------------------------ */

IOP_TEST(send_limits_and_errors, be)
{
    iop_loop *l = iop_test_loop(be);
    struct server sv = {0};
    struct sockaddr_storage sa;
    socklen_t salen;
    struct iop_dgram_config cfg = {.send_queue_max = 100000};
    CHECK(server_open(l, &sv, AF_INET, cfg, &sa, &salen) == 0);
    struct tally t = {.expect = 2};
    struct client c;
    client_open(l, &c, AF_INET, 5, &t);
    const struct sockaddr *to = (const struct sockaddr *)&c.addr;

    CHECK_EQ(iop_dgram_send(sv.d, txbuf, 65508, to, c.alen), -EMSGSIZE);
    CHECK_EQ(iop_dgram_send(sv.d, txbuf, 1, to, sizeof(struct sockaddr_storage) + 1), -EINVAL);
    /* Queue bound: the second 65507 would make 131014 > 100000 bytes. */
    memset(txbuf, 'z', 65507);
    CHECK_OK(iop_dgram_send(sv.d, txbuf, 65507, to, c.alen));
    CHECK_EQ(iop_dgram_send(sv.d, txbuf, 65507, to, c.alen), -ENOBUFS);
    CHECK_OK(iop_dgram_send(sv.d, NULL, 0, to, c.alen)); /* an empty datagram */
    run_until(l, &t.done, WAIT_MS);
    CHECK_EQ(c.got, 2);
    /* Sent and gone: the queue has room again. */
    CHECK_OK(iop_dgram_send(sv.d, txbuf, 65507, to, c.alen));

    /* To a port where nobody listens: dropped quietly, the handle lives. */
    struct sockaddr_storage dead;
    socklen_t deadlen;
    int dfd = udp_socket(AF_INET, &dead, &deadlen);
    CHECK(dfd >= 0);
    close(dfd);
    for (int i = 0; i < 3; i++)
        CHECK_OK(iop_dgram_send(sv.d, "void", 4, (const struct sockaddr *)&dead, deadlen));
    t.expect = 3;
    t.done = 0;
    run_until(l, &t.done, WAIT_MS);
    CHECK_OK(iop_dgram_send(sv.d, "ok", 2, to, c.alen));
    t.expect = 4;
    t.done = 0;
    run_until(l, &t.done, WAIT_MS);
    CHECK_EQ(sv.errors, 0);

    /* Close drops what is queued; sending afterwards is -EPIPE, also
     * before on_close has run. */
    for (int i = 0; i < 100; i++)
        CHECK_OK(iop_dgram_send(sv.d, "q", 1, to, c.alen));
    sv.in_close = 1;
    iop_dgram_close(sv.d);
    sv.in_close = 0;
    CHECK_EQ(iop_dgram_send(sv.d, "x", 1, to, c.alen), -EPIPE);
    CHECK_EQ(iop_dgram_recv_start(sv.d), -EPIPE);
    CHECK_EQ(sv.closes, 0);
    run_until(l, &sv.closes, WAIT_MS);
    spin(l, 5);
    CHECK_EQ(sv.closes, 1);
    CHECK(!sv.closed_inside);
    client_close(&c);
    iop_test_loop_free(l);
}

/* A Unix datagram socketpair holds few datagrams (net.unix.max_dgram_qlen),
 * so sending 500 at once finds the socket full many times: readiness waits
 * for IOP_WRITE, io_uring for room; nothing is lost, the peer gets all. */
IOP_TEST(send_waits_when_the_socket_is_full, be)
{
    enum { N = 500 };
    iop_loop *l = iop_test_loop(be);
    int sp[2];
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) == 0);
    struct server sv = {0};
    struct iop_dgram_config cfg = {.on_recv = server_recv, .on_close = server_on_close};
    CHECK_OK(iop_dgram_open(l, sp[0], &cfg, &sv.d));
    iop_dgram_set_data(sv.d, &sv);
    struct tally t = {.expect = N};
    struct client c = {.fd = sp[1], .id = 9, .tally = &t};
    iop_io_init(&c.io, c.fd, client_cb);
    CHECK_OK(iop_io_start(l, &c.io, IOP_READ));
    for (int seq = 0; seq < N; seq++) {
        size_t len = tagged_len(seq);
        fill(txbuf, len, c.id, seq);
        CHECK_OK(iop_dgram_send(sv.d, txbuf, len, NULL, 0)); /* connected: no address */
    }
    run_until(l, &t.done, WAIT_MS);
    spin(l, 5);
    CHECK_EQ(c.got, N);
    CHECK_EQ(c.bad, 0);
    server_close(l, &sv);
    client_close(&c);
    iop_test_loop_free(l);
}

/* A connected socket hears of an ICMP port-unreachable as ECONNREFUSED on
 * its next receive or send: an error about one peer, not the socket. */
IOP_TEST(icmp_error_is_not_fatal, be)
{
    iop_loop *l = iop_test_loop(be);
    struct server sv = {0};
    struct sockaddr_storage sa, ca;
    socklen_t salen, calen;
    CHECK(server_open(l, &sv, AF_INET, (struct iop_dgram_config){0}, &sa, &salen) == 0);
    int cfd = udp_socket(AF_INET, &ca, &calen);
    CHECK(cfd >= 0);
    CHECK(connect(iop_dgram_fd(sv.d), (struct sockaddr *)&ca, calen) == 0);
    close(cfd); /* nobody at ca now */
    CHECK_OK(iop_dgram_recv_start(sv.d));
    CHECK_OK(iop_dgram_send(sv.d, "ping", 4, NULL, 0));
    spin(l, 30);
    CHECK_OK(iop_dgram_send(sv.d, "ping", 4, NULL, 0));
    spin(l, 30);
    /* The peer comes back on the same port and is heard. */
    cfd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(cfd >= 0);
    CHECK(bind(cfd, (struct sockaddr *)&ca, calen) == 0);
    send_to(cfd, "back", 4, &sa, salen);
    sv.target = 1;
    run_until(l, &sv.done, WAIT_MS);
    CHECK_EQ(sv.errors, 0);
    close(cfd);
    server_close(l, &sv);
    iop_test_loop_free(l);
}

/* ---- receiving limits --------------------------------------------------- */

IOP_TEST(oversized_dropped_and_counted, be)
{
    iop_loop *l = iop_test_loop(be);
    struct server sv = {0};
    struct sockaddr_storage sa;
    socklen_t salen;
    struct iop_dgram_config cfg = {.max_size = 1000, .batch = 2};
    CHECK(server_open(l, &sv, AF_INET, cfg, &sa, &salen) == 0);
    CHECK_OK(iop_dgram_recv_start(sv.d));
    struct tally t = {0};
    struct client c;
    client_open(l, &c, AF_INET, 6, &t);
    memset(txbuf, 'a', 2000);
    send_to(c.fd, txbuf, 2000, &sa, salen);
    send_to(c.fd, txbuf, 1000, &sa, salen); /* exactly max_size: fits */
    send_to(c.fd, txbuf, 1001, &sa, salen);
    send_to(c.fd, txbuf, 10, &sa, salen);
    sv.target = 2;
    run_until(l, &sv.done, WAIT_MS);
    spin(l, 20);
    CHECK_EQ(sv.recvs, 2);
    CHECK_EQ(iop_dgram_dropped(sv.d), 2);
    server_close(l, &sv);
    client_close(&c);
    iop_test_loop_free(l);
}

/* ---- closing ------------------------------------------------------------ */

IOP_TEST(close_inside_on_recv, be)
{
    iop_loop *l = iop_test_loop(be);
    struct server sv = {.echo = 1, .close_after = 1};
    struct sockaddr_storage sa;
    socklen_t salen;
    CHECK(server_open(l, &sv, AF_INET, (struct iop_dgram_config){.batch = 4}, &sa, &salen) == 0);
    CHECK_OK(iop_dgram_recv_start(sv.d));
    struct tally t = {0};
    struct client c;
    client_open(l, &c, AF_INET, 0, &t);
    for (int seq = 0; seq < 10; seq++) /* more in the batch after the first */
        send_tagged(&c, seq, &sa, salen);
    run_until(l, &sv.closes, WAIT_MS);
    spin(l, 20);
    CHECK_EQ(sv.recvs, 1);
    CHECK_EQ(sv.closes, 1);
    CHECK(!sv.closed_inside);
    CHECK_EQ(c.got, 0); /* its echo was queued, and the close dropped it */
    client_close(&c);
    iop_test_loop_free(l);
}

/* Close with receives in flight and sends queued, before the loop ever ran:
 * everything is cancelled and waited for, then on_close. */
IOP_TEST(close_with_everything_in_flight, be)
{
    iop_loop *l = iop_test_loop(be);
    struct server sv = {0};
    struct sockaddr_storage sa;
    socklen_t salen;
    CHECK(server_open(l, &sv, AF_INET, (struct iop_dgram_config){0}, &sa, &salen) == 0);
    CHECK_OK(iop_dgram_recv_start(sv.d));
    CHECK(iop_loop_run(l, IOP_RUN_NOWAIT) >= 0); /* receives now in the kernel */
    for (int i = 0; i < 300; i++)
        CHECK_OK(iop_dgram_send(sv.d, txbuf, 100, (struct sockaddr *)&sa, salen));
    CHECK(iop_loop_run(l, IOP_RUN_NOWAIT) >= 0); /* sends too (to itself) */
    for (int i = 0; i < 10; i++)
        CHECK_OK(iop_dgram_send(sv.d, txbuf, 100, (struct sockaddr *)&sa, salen));
    server_close(l, &sv);
    iop_test_loop_free(l);
}

/* ---- opening ------------------------------------------------------------ */

static int is_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

IOP_TEST(open_errors_close_the_fd, be)
{
    iop_loop *l = iop_test_loop(be);
    iop_dgram *d = NULL;
    struct iop_dgram_config cfg = {.on_recv = server_recv};

    int tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(tcp >= 0);
    CHECK_EQ(iop_dgram_open(l, tcp, &cfg, &d), -EINVAL);
    CHECK(!is_open(tcp));

    struct sockaddr_storage sa;
    socklen_t salen;
    int fd = udp_socket(AF_INET, &sa, &salen);
    CHECK(fd >= 0);
    struct iop_dgram_config none = {0};
    CHECK_EQ(iop_dgram_open(l, fd, &none, &d), -EINVAL);
    CHECK(!is_open(fd));

    CHECK_EQ(iop_dgram_open(l, -1, &cfg, &d), -EBADF);

    /* A blocking socket is made non-blocking. */
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    CHECK_OK(iop_dgram_open(l, fd, &cfg, &d));
    CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK);
    struct server sv = {0};
    sv.d = d;
    iop_dgram_set_data(d, &sv);
    iop_dgram_close(d);
    CHECK_EQ(sv.closes, 0); /* no on_close configured: nothing to count */
    for (int i = 0; i < 10 && iop_loop_alive(l); i++)
        CHECK(iop_loop_run(l, IOP_RUN_NOWAIT) >= 0);
    CHECK_EQ(iop_loop_alive(l), 0);
    iop_test_loop_free(l);
}

/* test_net.c - addresses, listeners, socket activation and the acceptor,
 * run once per backend variant (the address tests do not use the loop, but
 * are cheap enough to repeat). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ioplex/net.h"
#include "runner.h"

/* ---- helpers ---------------------------------------------------------- */

static void check_format(const iop_addr *a, const char *want)
{
    char buf[IOP_ADDR_STRLEN];
    int n = iop_addr_format(a, buf, sizeof buf);
    if (n < 0 || strcmp(buf, want) != 0)
        iop_test_fail(__FILE__, __LINE__, "format: got '%s' (%d), want '%s'", buf, n, want);
    CHECK_EQ(n, strlen(want));
}

static int is_nonblock_cloexec(int fd)
{
    return (fcntl(fd, F_GETFL) & O_NONBLOCK) && (fcntl(fd, F_GETFD) & FD_CLOEXEC);
}

static int sockopt(int fd, int level, int name)
{
    int v = -1;
    socklen_t len = sizeof v;
    CHECK(getsockopt(fd, level, name, &v, &len) == 0);
    return v;
}

static uint16_t port_of(const iop_addr *a)
{
    return ntohs(a->u.sa.sa_family == AF_INET6 ? a->u.in6.sin6_port : a->u.in4.sin_port);
}

/* Listen on text (port 0 as a rule), read the real address back. */
static int listen_on(const char *text, const struct iop_listen_opts *opts, iop_addr *bound)
{
    iop_addr a;
    int fd;
    CHECK_OK(iop_addr_parse(text, &a));
    int rc = iop_listen(&a, opts, &fd);
    if (rc < 0)
        iop_test_fail(__FILE__, __LINE__, "iop_listen(%s): %s", text, iop_strerror(rc));
    CHECK(is_nonblock_cloexec(fd));
    if (bound)
        CHECK_OK(iop_local_addr(fd, bound));
    return fd;
}

/* A nonblocking client connecting to a. */
static int client(const iop_addr *a)
{
    int fd = socket(a->u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    CHECK(connect(fd, &a->u.sa, a->len) == 0 || errno == EINPROGRESS);
    return fd;
}

/* A private directory for Unix sockets; rmdir'ed by the test. */
static void temp_dir(char *dir, size_t len)
{
    snprintf(dir, len, "/tmp/ioplex-net-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
}

/* ---- addresses -------------------------------------------------------- */

struct form {
    const char *text;
    const char *formatted; /* NULL: the same as text */
    int kind, family;
    uint16_t port;
};

static const struct form forms[] = {
    {"127.0.0.1:8000", NULL, IOP_ADDR_TCP, AF_INET, 8000},
    {"0.0.0.0:0", NULL, IOP_ADDR_TCP, AF_INET, 0},
    {":8000", NULL, IOP_ADDR_TCP, AF_INET, 8000},
    {"1.2.3.4:00080", "1.2.3.4:80", IOP_ADDR_TCP, AF_INET, 80},
    {"255.255.255.255:65535", NULL, IOP_ADDR_TCP, AF_INET, 65535},
    {"[::1]:8000", NULL, IOP_ADDR_TCP, AF_INET6, 8000},
    {"[::]:0", NULL, IOP_ADDR_TCP, AF_INET6, 0},
    {"[2001:DB8::0:1]:443", "[2001:db8::1]:443", IOP_ADDR_TCP, AF_INET6, 443},
    {"[::ffff:1.2.3.4]:1", NULL, IOP_ADDR_TCP, AF_INET6, 1},
    {"[fe80::1%2]:80", NULL, IOP_ADDR_TCP, AF_INET6, 80},
    {"[fe80::1%0]:80", "[fe80::1]:80", IOP_ADDR_TCP, AF_INET6, 80},
    {"unix:/tmp/x.sock", NULL, IOP_ADDR_UNIX, AF_UNIX, 0},
    {"unix:relative.sock", NULL, IOP_ADDR_UNIX, AF_UNIX, 0},
    {"unix:/odd:[name]@:80", NULL, IOP_ADDR_UNIX, AF_UNIX, 0},
    {"unix:@abstract", NULL, IOP_ADDR_UNIX, AF_UNIX, 0},
    {"udp:127.0.0.1:9000", NULL, IOP_ADDR_UDP, AF_INET, 9000},
    {"udp::9000", NULL, IOP_ADDR_UDP, AF_INET, 9000},
    {"udp:[::1]:53", NULL, IOP_ADDR_UDP, AF_INET6, 53},
};

IOP_TEST(addr_every_form_round_trips, be)
{
    (void)be;
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        const struct form *f = &forms[i];
        for (int numeric = 0; numeric < 2; numeric++) {
            iop_addr a, b;
            int rc = numeric ? iop_addr_parse_numeric(f->text, &a) : iop_addr_parse(f->text, &a);
            if (rc < 0)
                iop_test_fail(__FILE__, __LINE__, "parse(%s): %s", f->text, iop_strerror(rc));
            CHECK_EQ(a.kind, f->kind);
            CHECK_EQ(a.u.sa.sa_family, f->family);
            if (f->family != AF_UNIX)
                CHECK_EQ(port_of(&a), f->port);
            const char *want = f->formatted ? f->formatted : f->text;
            check_format(&a, want);
            /* And back: the formatted text is the same address. */
            CHECK_OK(iop_addr_parse_numeric(want, &b));
            CHECK_EQ(b.kind, a.kind);
            CHECK_EQ(b.len, a.len);
            CHECK_EQ(b.dual, a.dual);
            /* Only `:PORT` means both families. */
            CHECK_EQ(a.dual, f->text[0] == ':' || strncmp(f->text, "udp::", 5) == 0);
            CHECK(memcmp(&a.u, &b.u, a.len) == 0);
        }
    }
}

IOP_TEST(addr_unix_paths, be)
{
    (void)be;
    char text[300], want[300];
    iop_addr a;
    /* sun_path is 108 bytes: 107 and the NUL fit, 108 do not. */
    for (int abstract = 0; abstract < 2; abstract++) {
        for (size_t len = 106; len <= 108; len++) {
            snprintf(text, sizeof text, "unix:%s", abstract ? "@" : "");
            size_t off = strlen(text);
            memset(text + off, 'p', len);
            text[off + len] = '\0';
            int rc = iop_addr_parse(text, &a);
            if (len <= 107) {
                CHECK_OK(rc);
                check_format(&a, text);
                CHECK_EQ(a.len, offsetof(struct sockaddr_un, sun_path) + 1 + len);
            } else {
                CHECK_EQ(rc, -ENAMETOOLONG);
                CHECK_EQ(a.kind, IOP_ADDR_NONE);
            }
        }
    }
    memset(want, 'x', 200);
    snprintf(text, sizeof text, "unix:/%.200s", want);
    CHECK_EQ(iop_addr_parse(text, &a), -ENAMETOOLONG);
    CHECK(a.u.un.sun_path[0] == '\0');
}

IOP_TEST(addr_resolves_names, be)
{
    (void)be;
    iop_addr a;
    /* localhost means IPv4 whatever the resolver's order (see addr.c). */
    CHECK_OK(iop_addr_parse("localhost:8000", &a));
    check_format(&a, "127.0.0.1:8000");
    CHECK_OK(iop_addr_parse("udp:localhost:0", &a));
    check_format(&a, "udp:127.0.0.1:0");
    CHECK_EQ(iop_addr_parse_numeric("localhost:8000", &a), -ENXIO);
    CHECK_EQ(a.kind, IOP_ADDR_NONE);
    int rc = iop_addr_parse("no-such-host.invalid:80", &a);
    CHECK(rc == -ENXIO || rc == -EAGAIN);
    CHECK_EQ(iop_addr_parse_numeric("[fe80::1%lo]:80", &a), -ENXIO);
    CHECK_OK(iop_addr_parse("[fe80::1%lo]:80", &a)); /* the loopback interface */
    CHECK(a.u.in6.sin6_scope_id != 0);
    CHECK_EQ(iop_addr_parse("[fe80::1%no-such-if0]:80", &a), -ENXIO);
}

struct bad {
    const char *text;
    int err;
};

static const struct bad bads[] = {
    {"", -EINVAL},
    {":", -EINVAL},
    {"1.2.3.4", -EINVAL},
    {"1.2.3.4:", -EINVAL},
    {":65536", -ERANGE},
    {":99999999999999999999999", -ERANGE},
    {":9999999999999999999999x", -EINVAL},
    {"[::1", -EINVAL},
    {"[::1]", -EINVAL},
    {"[::1]:", -EINVAL},
    {"[::1]8000", -EINVAL},
    {"[::1]:80:90", -EINVAL},
    {"[::1]]:80", -EINVAL},
    {"[]:80", -EINVAL},
    {"[1.2.3.4]:80", -EINVAL},
    {"[::1%]:80", -EINVAL},
    {"[::1%99999999999]:80", -EINVAL},
    {"[::1%a b]:80", -EINVAL},
    {"::1:80", -EINVAL},
    {"::1", -EINVAL},
    {"unix:", -EINVAL},
    {"unix:@", -EINVAL},
    {"udp:", -EINVAL},
    {"udp::", -EINVAL},
    {"udp:unix:/x", -EINVAL},
    {"host:port", -EINVAL},
    {"1.2.3.4:-1", -EINVAL},
    {"1.2.3.4:+80", -EINVAL},
    {"1.2.3.4:0x50", -EINVAL},
    {"1.2.3.4:80 ", -EINVAL},
    {" 1.2.3.4:80", -EINVAL},
    {"1.2.3:80", -EINVAL},
    {"1.2.3.256:80", -EINVAL},
    {"01.2.3.4:80", -EINVAL},
    {"0x7f.1:80", -EINVAL},
    {"ho st:80", -EINVAL},
    {"host/x:80", -EINVAL},
    {"tcp:1.2.3.4:80", -EINVAL},
    {"UNIX:/x", -EINVAL},
};

IOP_TEST(addr_malformed, be)
{
    (void)be;
    for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
        for (int numeric = 0; numeric < 2; numeric++) {
            iop_addr a;
            memset(&a, 0x5a, sizeof a);
            int rc = numeric ? iop_addr_parse_numeric(bads[i].text, &a)
                             : iop_addr_parse(bads[i].text, &a);
            if (rc != bads[i].err)
                iop_test_fail(__FILE__, __LINE__, "parse('%s'): %d (%s), want %d", bads[i].text, rc,
                              iop_strerror(rc), bads[i].err);
            /* Never half-filled. */
            iop_addr zero;
            memset(&zero, 0, sizeof zero);
            CHECK(memcmp(&a, &zero, sizeof a) == 0);
        }
    }
    iop_addr a;
    CHECK_EQ(iop_addr_parse(NULL, &a), -EINVAL);
    CHECK_EQ(iop_addr_parse("1.2.3.4:80", NULL), -EINVAL);
    CHECK_EQ(iop_addr_parse_len(NULL, 3, 0, &a), -EINVAL);
}

IOP_TEST(addr_embedded_nul_and_exact_length, be)
{
    (void)be;
    iop_addr a;
    CHECK_EQ(iop_addr_parse_len("1.2.3.4:80\0", 11, 0, &a), -EINVAL);
    CHECK_EQ(iop_addr_parse_len("unix:/tmp/a\0b", 13, 0, &a), -EINVAL);
    CHECK_EQ(iop_addr_parse_len("\0", 1, 0, &a), -EINVAL);
    /* A length shorter than the string: only those bytes count. */
    CHECK_OK(iop_addr_parse_len("1.2.3.4:8000", 11, 0, &a));
    check_format(&a, "1.2.3.4:800");

    /* Each input ends at a PROT_NONE page: reading one byte past the given
     * length faults. */
    long page = sysconf(_SC_PAGESIZE);
    char *mem =
        mmap(NULL, (size_t)page * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED);
    CHECK(mprotect(mem + page, (size_t)page, PROT_NONE) == 0);
    const char *inputs[] = {"[::1]:8000", "[::1",   "unix:/x", "unix:@",    "udp::1", "1.2.3.4:",
                            "1.2.3.4",    "[::1]:", ":",       "[fe80::1%", "a.b:12", "x"};
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        size_t n = strlen(inputs[i]);
        char *p = mem + page - n;
        memcpy(p, inputs[i], n);
        char buf[IOP_ADDR_STRLEN];
        if (iop_addr_parse_len(p, n, IOP_ADDR_NUMERIC, &a) == 0)
            CHECK(iop_addr_format(&a, buf, sizeof buf) > 0);
    }
    munmap(mem, (size_t)page * 2);
}

IOP_TEST(addr_format_errors, be)
{
    (void)be;
    iop_addr a;
    char buf[IOP_ADDR_STRLEN];
    CHECK_OK(iop_addr_parse("udp:[::1]:9000", &a));
    size_t n = strlen("udp:[::1]:9000");
    CHECK_EQ(iop_addr_format(&a, buf, n + 1), n);
    CHECK_EQ(iop_addr_format(&a, buf, n), -ENOSPC);
    CHECK_EQ(buf[0], '\0');
    CHECK_EQ(iop_addr_format(&a, buf, 0), -ENOSPC);
    CHECK_EQ(iop_addr_format(NULL, buf, sizeof buf), -EINVAL);
    memset(&a, 0, sizeof a);
    CHECK_EQ(iop_addr_format(&a, buf, sizeof buf), -EINVAL);
    /* A kind that does not match the family. */
    CHECK_OK(iop_addr_parse("unix:/x", &a));
    a.kind = IOP_ADDR_TCP;
    CHECK_EQ(iop_addr_format(&a, buf, sizeof buf), -EINVAL);
    /* Abstract names holding a NUL cannot be written as text. */
    CHECK_OK(iop_addr_parse("unix:@ab", &a));
    a.u.un.sun_path[1] = '\0';
    CHECK_EQ(iop_addr_format(&a, buf, sizeof buf), -EINVAL);
}

/* ---- listeners -------------------------------------------------------- */

IOP_TEST(listen_tcp4_port0, be)
{
    (void)be;
    iop_addr bound;
    int fd = listen_on("127.0.0.1:0", NULL, &bound);
    CHECK_EQ(bound.kind, IOP_ADDR_TCP);
    CHECK(port_of(&bound) != 0);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%u", port_of(&bound));
    check_format(&bound, want);
    CHECK_EQ(sockopt(fd, SOL_SOCKET, SO_REUSEADDR), 1);
    CHECK_EQ(sockopt(fd, SOL_SOCKET, SO_ACCEPTCONN), 1);
    CHECK_EQ(sockopt(fd, SOL_SOCKET, SO_REUSEPORT), 0);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(connect(c, &bound.u.sa, bound.len) == 0);
    close(c);
    close(fd);
}

IOP_TEST(listen_tcp6_is_v6only, be)
{
    (void)be;
    iop_addr a, bound;
    int fd6, fd4;
    CHECK_OK(iop_addr_parse("[::1]:0", &a));
    int rc = iop_listen(&a, NULL, &fd6);
    if (rc == -EAFNOSUPPORT || rc == -EADDRNOTAVAIL)
        IOP_SKIP("no IPv6 loopback here");
    CHECK_OK(rc);
    CHECK_OK(iop_local_addr(fd6, &bound));
    char want[64];
    snprintf(want, sizeof want, "[::1]:%u", port_of(&bound));
    check_format(&bound, want);
    CHECK_EQ(sockopt(fd6, IPPROTO_IPV6, IPV6_V6ONLY), 1);
    close(fd6);

    /* v6-only: [::]:P and 0.0.0.0:P bind side by side.  The kernel
     * picks P free for IPv6 only, so another process may hold it on IPv4:
     * try a few ports (with dual-stack sockets every try would fail). */
    for (int tries = 0;; tries++) {
        fd6 = listen_on("[::]:0", NULL, &bound);
        CHECK_EQ(bound.dual, 0);
        snprintf(want, sizeof want, "0.0.0.0:%u", port_of(&bound));
        CHECK_OK(iop_addr_parse(want, &a));
        rc = iop_listen(&a, NULL, &fd4);
        close(fd6);
        if (rc == 0)
            break;
        CHECK_EQ(rc, -EADDRINUSE);
        CHECK(tries < 20);
    }
    close(fd4);
}

/* Whether this host has IPv6 at all (the loopback can be bound). */
static int have_ipv6(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* Connect to the port of bound over the loopback of family, then accept it
 * on fd (blocking a moment): the peer's family as the server sees it. */
static int connect_accept(int fd, const iop_addr *bound, int family)
{
    char text[64];
    snprintf(text, sizeof text, family == AF_INET6 ? "[::1]:%u" : "127.0.0.1:%u", port_of(bound));
    iop_addr to;
    CHECK_OK(iop_addr_parse_numeric(text, &to));
    int c = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(c >= 0);
    if (connect(c, &to.u.sa, to.len) < 0)
        iop_test_fail(__FILE__, __LINE__, "connect %s: %s", text, iop_strerror(-errno));
    struct pollfd p = {.fd = fd, .events = POLLIN};
    CHECK_EQ(poll(&p, 1, 2000), 1);
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    int s = accept4(fd, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
    CHECK(s >= 0);
    close(s);
    close(c);
    return peer.ss_family;
}

/* A datagram "ping" from a new socket of to's family to to: fd gets it. */
static void udp_ping(int fd, const iop_addr *to)
{
    int c = socket(to->u.sa.sa_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK_EQ(sendto(c, "ping", 4, 0, &to->u.sa, to->len), 4);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    CHECK_EQ(poll(&p, 1, 2000), 1);
    char buf[8];
    CHECK_EQ(recv(fd, buf, sizeof buf, 0), 4);
    CHECK(memcmp(buf, "ping", 4) == 0);
    close(c);
}

/* :PORT is every interface of both families: one [::] socket, not
 * v6-only, that IPv4 clients reach too; its SO_REUSEPORT siblings, bound to
 * what iop_local_addr reads back, are the same. */
IOP_TEST(listen_all_interfaces_is_dual_stack, be)
{
    (void)be;
    struct iop_listen_opts opts = {.reuseport = 1};
    iop_addr bound, again;
    int fd = listen_on(":0", &opts, &bound);
    char want[64];
    if (!have_ipv6()) {
        CHECK_EQ(bound.u.sa.sa_family, AF_INET); /* the fallback */
        CHECK_EQ(connect_accept(fd, &bound, AF_INET), AF_INET);
        close(fd);
        IOP_SKIP("no IPv6 here: only the 0.0.0.0 fallback was checked");
    }
    CHECK_EQ(bound.u.sa.sa_family, AF_INET6);
    CHECK_EQ(bound.dual, 1);
    CHECK_EQ(sockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY), 0);
    snprintf(want, sizeof want, "[::]:%u", port_of(&bound));
    check_format(&bound, want);
    CHECK_EQ(connect_accept(fd, &bound, AF_INET6), AF_INET6);
    CHECK_EQ(connect_accept(fd, &bound, AF_INET), AF_INET6); /* ::ffff:127.0.0.1 */

    int sib;
    CHECK_OK(iop_listen(&bound, &opts, &sib));
    CHECK_EQ(sockopt(sib, IPPROTO_IPV6, IPV6_V6ONLY), 0);
    CHECK_OK(iop_local_addr(sib, &again));
    CHECK_EQ(again.dual, 1);
    close(sib);

    /* The port is taken on IPv4 too: neither 0.0.0.0:P nor a second :P
     * binds (a busy port is never a reason to fall back to IPv4 alone). */
    iop_addr a;
    int fd2;
    snprintf(want, sizeof want, "0.0.0.0:%u", port_of(&bound));
    CHECK_OK(iop_addr_parse(want, &a));
    CHECK_EQ(iop_listen(&a, NULL, &fd2), -EADDRINUSE);
    snprintf(want, sizeof want, ":%u", port_of(&bound));
    CHECK_OK(iop_addr_parse(want, &a));
    CHECK_EQ(iop_listen(&a, NULL, &fd2), -EADDRINUSE);
    close(fd);

    /* UDP: udp::PORT takes datagrams of both families. */
    fd = listen_on("udp::0", NULL, &bound);
    CHECK_EQ(bound.kind, IOP_ADDR_UDP);
    snprintf(want, sizeof want, "udp:[::]:%u", port_of(&bound));
    check_format(&bound, want);
    for (int family = AF_INET; family; family = family == AF_INET ? AF_INET6 : 0) {
        snprintf(want, sizeof want, family == AF_INET6 ? "[::1]:%u" : "127.0.0.1:%u",
                 port_of(&bound));
        CHECK_OK(iop_addr_parse_numeric(want, &a));
        udp_ping(fd, &a);
    }
    close(fd);
}

IOP_TEST(listen_unix_replaces_only_stale_files, be)
{
    (void)be;
    char dir[64], text[160], path[96];
    temp_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/s.sock", dir);
    snprintf(text, sizeof text, "unix:%s", path);
    iop_addr a, bound;
    int fd, fd2;
    CHECK_OK(iop_addr_parse(text, &a));
    CHECK_OK(iop_listen(&a, NULL, &fd));
    CHECK_OK(iop_local_addr(fd, &bound));
    CHECK_EQ(bound.kind, IOP_ADDR_UNIX);
    check_format(&bound, text);

    /* Alive: refused, and the file stays. */
    CHECK_EQ(iop_listen(&a, NULL, &fd2), -EADDRINUSE);
    CHECK_EQ(fd2, -1);
    int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(connect(c, &a.u.sa, a.len) == 0);
    close(c);

    /* Stale (closed, file left behind): replaced. */
    close(fd);
    CHECK(access(path, F_OK) == 0);
    CHECK_OK(iop_listen(&a, NULL, &fd));
    c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(connect(c, &a.u.sa, a.len) == 0);
    close(c);
    close(fd);

    /* Not a socket: never removed. */
    CHECK(unlink(path) == 0);
    int f = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    CHECK(f >= 0);
    close(f);
    CHECK_EQ(iop_listen(&a, NULL, &fd), -EADDRINUSE);
    struct stat st;
    CHECK(stat(path, &st) == 0 && S_ISREG(st.st_mode));
    CHECK(unlink(path) == 0);

    /* SO_REUSEPORT means nothing for Unix sockets. */
    struct iop_listen_opts opts = {.reuseport = 1};
    CHECK_EQ(iop_listen(&a, &opts, &fd), -EOPNOTSUPP);

    /* Missing directory. */
    snprintf(text, sizeof text, "unix:%s/no/such/dir.sock", dir);
    CHECK_OK(iop_addr_parse(text, &a));
    CHECK_EQ(iop_listen(&a, NULL, &fd), -ENOENT);
    CHECK(rmdir(dir) == 0);
}

IOP_TEST(listen_unix_abstract, be)
{
    (void)be;
    char text[64];
    snprintf(text, sizeof text, "unix:@ioplex-test-%d", (int)getpid());
    iop_addr a, bound;
    int fd, fd2;
    CHECK_OK(iop_addr_parse(text, &a));
    CHECK_OK(iop_listen(&a, NULL, &fd));
    CHECK_OK(iop_local_addr(fd, &bound));
    check_format(&bound, text);
    CHECK_EQ(iop_listen(&a, NULL, &fd2), -EADDRINUSE);
    close(fd);
}

IOP_TEST(listen_udp, be)
{
    (void)be;
    iop_addr bound;
    int fd = listen_on("udp:127.0.0.1:0", NULL, &bound);
    CHECK_EQ(bound.kind, IOP_ADDR_UDP);
    char want[64];
    snprintf(want, sizeof want, "udp:127.0.0.1:%u", port_of(&bound));
    check_format(&bound, want);
    CHECK_EQ(sockopt(fd, SOL_SOCKET, SO_TYPE), SOCK_DGRAM);
    CHECK_EQ(sockopt(fd, SOL_SOCKET, SO_REUSEADDR), 0);
    udp_ping(fd, &bound);
    close(fd);
}

IOP_TEST(listen_reuseport_shares_a_port, be)
{
    (void)be;
    const char *forms_[] = {"127.0.0.1:0", "udp:127.0.0.1:0"};
    for (int i = 0; i < 2; i++) {
        struct iop_listen_opts opts = {.reuseport = 1, .backlog = 16};
        iop_addr bound;
        int fd1 = listen_on(forms_[i], &opts, &bound);
        CHECK_EQ(sockopt(fd1, SOL_SOCKET, SO_REUSEPORT), 1);
        int fd2, fd3;
        CHECK_OK(iop_listen(&bound, &opts, &fd2));
        /* Without the option, the port is taken. */
        CHECK_EQ(iop_listen(&bound, NULL, &fd3), -EADDRINUSE);
        CHECK_EQ(fd3, -1);
        close(fd2);
        close(fd1);
    }
}

IOP_TEST(listen_errors, be)
{
    (void)be;
    iop_addr a;
    int fd = 123;
    CHECK_EQ(iop_listen(NULL, NULL, &fd), -EINVAL);
    CHECK_EQ(fd, -1);
    CHECK_OK(iop_addr_parse("127.0.0.1:0", &a));
    CHECK_EQ(iop_listen(&a, NULL, NULL), -EINVAL);
    struct iop_listen_opts opts = {.backlog = -1};
    CHECK_EQ(iop_listen(&a, &opts, &fd), -EINVAL);
    a.kind = IOP_ADDR_UNIX; /* kind and family disagree */
    CHECK_EQ(iop_listen(&a, NULL, &fd), -EINVAL);
    memset(&a, 0, sizeof a);
    CHECK_EQ(iop_listen(&a, NULL, &fd), -EINVAL);
    CHECK_OK(iop_addr_parse("203.0.113.1:0", &a)); /* TEST-NET-3: not ours */
    CHECK_EQ(iop_listen(&a, NULL, &fd), -EADDRNOTAVAIL);
    CHECK_EQ(fd, -1);
}

IOP_TEST(local_addr_errors, be)
{
    (void)be;
    iop_addr a;
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    CHECK_EQ(iop_local_addr(p[0], &a), -ENOTSOCK);
    CHECK_EQ(a.kind, IOP_ADDR_NONE);
    close(p[0]);
    close(p[1]);
    CHECK_EQ(iop_local_addr(p[0], &a), -EBADF);
    int d = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK_EQ(iop_local_addr(d, &a), -EPROTONOSUPPORT);
    close(d);
    CHECK_EQ(iop_local_addr(0, NULL), -EINVAL);
}

/* ---- systemd socket activation ---------------------------------------- */

static void set_listen_env(const char *fds, long pid)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%ld", pid);
    CHECK(setenv("LISTEN_FDS", fds, 1) == 0);
    CHECK(setenv("LISTEN_PID", buf, 1) == 0);
    CHECK(setenv("LISTEN_FDNAMES", "web:echo", 1) == 0);
}

static int env_gone(void)
{
    return !getenv("LISTEN_FDS") && !getenv("LISTEN_PID") && !getenv("LISTEN_FDNAMES");
}

/* The child: listeners at fds 3 and 4 as systemd passes them (blocking,
 * inheritable), then the protocol's cases. */
static void listen_fds_child(void)
{
    iop_addr b1, b2, got;
    char name[64];
    snprintf(name, sizeof name, "unix:@ioplex-test-fds-%d", (int)getpid());
    int l1 = listen_on("127.0.0.1:0", NULL, &b1);
    int l2 = listen_on(name, NULL, &b2);
    /* Moved out of the way first, so that dup2 onto 3 and 4 cannot close
     * one of them. */
    int h1 = fcntl(l1, F_DUPFD, 100), h2 = fcntl(l2, F_DUPFD, 100);
    close(l1);
    close(l2);
    CHECK(dup2(h1, 3) == 3 && dup2(h2, 4) == 4);
    close(h1);
    close(h2);
    for (int fd = 3; fd <= 4; fd++)
        CHECK(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) == 0);

    CHECK(env_gone());
    CHECK_EQ(iop_listen_fds(), 0); /* nothing passed */

    set_listen_env("2", (long)getpid() + 1); /* for another process */
    CHECK_EQ(iop_listen_fds(), 0);
    CHECK(env_gone());
    CHECK(!(fcntl(3, F_GETFD) & FD_CLOEXEC));

    set_listen_env("two", (long)getpid());
    CHECK_EQ(iop_listen_fds(), -EINVAL);
    CHECK(env_gone());

    set_listen_env("2", (long)getpid());
    CHECK_EQ(iop_listen_fds(), 2);
    CHECK(env_gone());
    for (int fd = 3; fd <= 4; fd++)
        CHECK(is_nonblock_cloexec(fd));
    CHECK_OK(iop_local_addr(IOP_LISTEN_FDS_START, &got));
    CHECK_EQ(got.kind, IOP_ADDR_TCP);
    CHECK_EQ(port_of(&got), port_of(&b1));
    CHECK_OK(iop_local_addr(IOP_LISTEN_FDS_START + 1, &got));
    CHECK_EQ(got.kind, IOP_ADDR_UNIX);

    close(4); /* announced but not open */
    set_listen_env("2", (long)getpid());
    CHECK_EQ(iop_listen_fds(), -EBADF);
    CHECK(env_gone());
    close(3);
}

IOP_TEST(listen_fds_inherits_sockets, be)
{
    (void)be;
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        listen_fds_child();
        _exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
}

/* ---- the acceptor ----------------------------------------------------- */

#define MAX_ACCEPTED 256

struct server {
    iop_acceptor acc;
    int fds[MAX_ACCEPTED];
    int naccepted;
    int target; /* sets done when naccepted reaches it */
    int done;
    int stop_after; /* stop from the accept callback after this many */
    int paused;     /* pause_each_cb paused the acceptor */
    int errors, last_err;
    long long first_error_ms, last_error_ms;
    int closed;
};

static void on_close(iop_acceptor *acc)
{
    struct server *s = acc->data;
    s->closed++;
}

static void on_accept(iop_acceptor *acc, int fd)
{
    struct server *s = acc->data;
    CHECK(is_nonblock_cloexec(fd));
    CHECK(s->naccepted < MAX_ACCEPTED);
    s->fds[s->naccepted++] = fd;
    if (s->naccepted == s->target)
        s->done = 1;
    if (s->stop_after && s->naccepted == s->stop_after)
        iop_acceptor_stop(acc, on_close);
}

static void on_error(iop_acceptor *acc, int err)
{
    struct server *s = acc->data;
    long long now = iop_test_now_ms();
    if (!s->errors)
        s->first_error_ms = now;
    else /* at most once a second (the loop's cached clock: a little slack) */
        CHECK(now - s->last_error_ms >= 990);
    s->errors++;
    s->last_err = err;
    s->last_error_ms = now;
}

static void server_init(struct server *s)
{
    memset(s, 0, sizeof *s);
    s->acc.data = s;
}

static void close_accepted(struct server *s)
{
    for (int i = 0; i < s->naccepted; i++)
        close(s->fds[i]);
    s->naccepted = 0;
}

static void tick_cb(iop_timer *t)
{
    (void)t;
}

/* iop_test_run_until() with a 2 ms tick: a flag set by a deferred callback
 * would otherwise leave RUN_ONCE waiting in the backend until the guard
 * timer fires. */
static void run_until(iop_loop *l, const int *flag, int timeout_ms)
{
    iop_timer tick;
    iop_timer_init(&tick, tick_cb);
    CHECK_OK(iop_timer_start(l, &tick, 2, 2));
    iop_test_run_until(l, flag, timeout_ms);
    iop_timer_stop(&tick);
}

/* Stop, wait for close_cb, and check the loop lets go of everything. */
static void server_stop(iop_loop *l, struct server *s)
{
    iop_acceptor_stop(&s->acc, on_close);
    CHECK_EQ(s->closed, 0); /* never from inside stop */
    run_until(l, &s->closed, 2000);
    CHECK_EQ(s->closed, 1);
    CHECK_EQ(iop_loop_alive(l), 0);
}

/* Run a few loop iterations without waiting long. */
static void spin(iop_loop *l, int ms)
{
    long long end = iop_test_now_ms() + ms;
    while (iop_test_now_ms() < end) {
        CHECK(iop_loop_run(l, IOP_RUN_NOWAIT) >= 0);
        usleep(2000);
    }
}

IOP_TEST(acceptor_accepts_100, be)
{
    char abstract[64];
    snprintf(abstract, sizeof abstract, "unix:@ioplex-test-acc-%d", (int)getpid());
    const char *where[] = {"127.0.0.1:0", abstract};
    for (int w = 0; w < 2; w++) {
        iop_loop *l = iop_test_loop(be);
        iop_addr bound;
        int lfd = listen_on(where[w], NULL, &bound);
        struct server s;
        server_init(&s);
        s.target = 100;
        CHECK_OK(iop_acceptor_start(l, &s.acc, lfd, on_accept, on_error));
        CHECK_EQ(iop_acceptor_start(l, &s.acc, lfd, on_accept, on_error), -EBUSY);
        int cl[100];
        /* All at once, more than one wakeup's budget. */
        for (int i = 0; i < 100; i++)
            cl[i] = client(&bound);
        run_until(l, &s.done, 5000);
        CHECK_EQ(s.naccepted, 100);
        CHECK_EQ(s.acc.accepted, 100);
        CHECK_EQ(s.acc.shed, 0);
        CHECK_EQ(s.errors, 0);
        server_stop(l, &s);
        close_accepted(&s);
        for (int i = 0; i < 100; i++)
            close(cl[i]);
        close(lfd);
        iop_test_loop_free(l);
    }
}

IOP_TEST(acceptor_pause_resume, be)
{
    iop_loop *l = iop_test_loop(be);
    iop_addr bound;
    int lfd = listen_on("127.0.0.1:0", NULL, &bound);
    struct server s;
    server_init(&s);
    CHECK_EQ(iop_acceptor_pause(&s.acc), -EINVAL); /* not started */
    CHECK_OK(iop_acceptor_start(l, &s.acc, lfd, on_accept, on_error));
    int cl[6];
    s.target = 1;
    cl[0] = client(&bound);
    run_until(l, &s.done, 2000);

    CHECK_OK(iop_acceptor_pause(&s.acc));
    CHECK_OK(iop_acceptor_pause(&s.acc));
    for (int i = 1; i < 6; i++)
        cl[i] = client(&bound);
    spin(l, 50);
    CHECK_EQ(s.naccepted, 1); /* paused: nothing handed over */

    s.done = 0;
    s.target = 6;
    CHECK_OK(iop_acceptor_resume(&s.acc));
    CHECK_OK(iop_acceptor_resume(&s.acc));
    run_until(l, &s.done, 2000);
    CHECK_EQ(s.naccepted, 6);

    /* Paused, then stopped: the close callback still comes. */
    CHECK_OK(iop_acceptor_pause(&s.acc));
    server_stop(l, &s);
    close_accepted(&s);
    for (int i = 0; i < 6; i++)
        close(cl[i]);
    close(lfd);
    iop_test_loop_free(l);
}

/* Pause after every connection, as --max-conns 1 would.  On io_uring the
 * kernel may already have accepted more when the pause reaches it: those
 * are held and handed over after resume, never while paused. */
static void pause_each_cb(iop_acceptor *acc, int fd)
{
    struct server *s = acc->data;
    CHECK(!s->paused);
    CHECK(s->naccepted < MAX_ACCEPTED);
    s->fds[s->naccepted++] = fd;
    CHECK_OK(iop_acceptor_pause(acc));
    s->paused = 1;
}

IOP_TEST(acceptor_pause_in_callback_loses_nothing, be)
{
    enum { N = 40 };
    iop_loop *l = iop_test_loop(be);
    iop_addr bound;
    int lfd = listen_on("127.0.0.1:0", NULL, &bound);
    struct server s;
    server_init(&s);
    CHECK_OK(iop_acceptor_start(l, &s.acc, lfd, pause_each_cb, on_error));
    int cl[N];
    for (int i = 0; i < N; i++)
        cl[i] = client(&bound);
    /* One at a time for half of them... */
    for (int i = 0; i < N / 2; i++) {
        run_until(l, &s.paused, 2000);
        CHECK_EQ(s.naccepted, i + 1);
        spin(l, 2);
        CHECK_EQ(s.naccepted, i + 1);
        s.paused = 0;
        CHECK_OK(iop_acceptor_resume(&s.acc));
    }
    /* ...then stop while paused: whatever was held is closed, not leaked
     * (the runner counts fds), and no client is left hanging. */
    run_until(l, &s.paused, 2000);
    CHECK_EQ(s.naccepted, N / 2 + 1);
    server_stop(l, &s);
    CHECK_EQ(s.acc.accepted, N / 2 + 1);
    close_accepted(&s);
    close(lfd);
    for (int i = 0; i < N; i++)
        close(cl[i]);
    iop_test_loop_free(l);
}

/* Stopped from its own callback, freed in close_cb: ASan sees any use
 * after that. */
static void free_on_close(iop_acceptor *acc)
{
    struct server *s = acc->data;
    s->closed++;
    free(acc);
}

static void stop_and_free_cb(iop_acceptor *acc, int fd)
{
    struct server *s = acc->data;
    s->fds[s->naccepted++] = fd;
    iop_acceptor_stop(acc, free_on_close);
    iop_acceptor_stop(acc, NULL); /* already stopping: no-op */
    CHECK_EQ(iop_acceptor_pause(acc), -EINVAL);
}

IOP_TEST(acceptor_stop_in_callback, be)
{
    iop_loop *l = iop_test_loop(be);
    iop_addr bound;
    int lfd = listen_on("127.0.0.1:0", NULL, &bound);
    struct server s;
    server_init(&s);
    iop_acceptor *acc = calloc(1, sizeof *acc);
    CHECK(acc != NULL);
    acc->data = &s;
    CHECK_OK(iop_acceptor_start(l, acc, lfd, stop_and_free_cb, on_error));
    int cl[3];
    for (int i = 0; i < 3; i++)
        cl[i] = client(&bound);
    run_until(l, &s.closed, 2000);
    CHECK_EQ(s.naccepted, 1);
    CHECK_EQ(iop_loop_alive(l), 0);
    close_accepted(&s);

    /* Restart on a fresh struct; stop with no close callback. */
    server_init(&s);
    s.target = 2; /* the two still in the backlog (or closed, on io_uring) */
    CHECK_OK(iop_acceptor_start(l, &s.acc, lfd, on_accept, on_error));
    spin(l, 50);
    iop_acceptor_stop(&s.acc, NULL);
    for (int i = 0; i < 200 && iop_loop_alive(l); i++)
        CHECK(iop_loop_run(l, IOP_RUN_ONCE) >= 0);
    CHECK_EQ(iop_loop_alive(l), 0);
    close_accepted(&s);
    for (int i = 0; i < 3; i++)
        close(cl[i]);
    close(lfd);
    iop_test_loop_free(l);
}

IOP_TEST(acceptor_errors, be)
{
    iop_loop *l = iop_test_loop(be);
    struct server s;
    server_init(&s);
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    CHECK_EQ(iop_acceptor_start(l, &s.acc, p[0], on_accept, on_error), -ENOTSOCK);
    close(p[0]);
    close(p[1]);
    CHECK_EQ(iop_acceptor_start(l, &s.acc, p[0], on_accept, on_error), -EBADF);
    int u = listen_on("udp:127.0.0.1:0", NULL, NULL);
    CHECK_EQ(iop_acceptor_start(l, &s.acc, u, on_accept, on_error), -EINVAL);
    close(u);
    int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0); /* not listening */
    CHECK_EQ(iop_acceptor_start(l, &s.acc, t, on_accept, on_error), -EINVAL);
    CHECK_EQ(iop_acceptor_start(l, &s.acc, -1, on_accept, on_error), -EINVAL);
    CHECK_EQ(iop_acceptor_start(l, &s.acc, t, NULL, on_error), -EINVAL);
    close(t);
    CHECK_EQ(iop_acceptor_resume(&s.acc), -EINVAL);
    iop_acceptor_stop(&s.acc, on_close); /* never started: no-op */
    spin(l, 10);
    CHECK_EQ(s.closed, 0);

    /* A blocking listener is made nonblocking. */
    int lfd = listen_on("127.0.0.1:0", NULL, NULL);
    CHECK(fcntl(lfd, F_SETFL, 0) == 0);
    CHECK_OK(iop_acceptor_start(l, &s.acc, lfd, on_accept, on_error));
    CHECK(fcntl(lfd, F_GETFL) & O_NONBLOCK);
    server_stop(l, &s);
    close(lfd);
    iop_test_loop_free(l);
}

/* An fd limit that leaves exactly room free slots below it.  Linux lets the
 * limit drop below fds already open (the test's parent may hold some high
 * ones); it only stops new fds from getting numbers at or above it. */
static rlim_t limit_with_room(int room)
{
    int seen = 0;
    for (int fd = 0;; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF && ++seen == room)
            return (rlim_t)fd + 1;
}

static int free_below(int limit)
{
    int n = 0;
    for (int fd = 0; fd < limit; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF)
            n++;
    return n;
}

/* Has the client's connection been closed by the server (EOF or RST)? */
static int shut_out(int fd)
{
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno == ECONNRESET);
}

static int count_shut_out(const int *cl, int n, int want, int timeout_ms)
{
    long long end = iop_test_now_ms() + timeout_ms;
    int got;
    do {
        got = 0;
        for (int i = 0; i < n; i++)
            got += shut_out(cl[i]);
        if (got >= want)
            break;
        usleep(2000);
    } while (iop_test_now_ms() < end);
    return got;
}

struct shed_wait {
    iop_timer t;
    struct server *s;
    uint64_t want_shed;
    int done;
};

static void shed_poll_cb(iop_timer *t)
{
    struct shed_wait *w = t->data;
    if (w->s->acc.shed >= w->want_shed)
        w->done = 1;
}

static void run_until_shed(iop_loop *l, struct server *s, uint64_t want)
{
    struct shed_wait w = {.s = s, .want_shed = want};
    iop_timer_init(&w.t, shed_poll_cb);
    w.t.data = &w;
    CHECK_OK(iop_timer_start(l, &w.t, 5, 5));
    iop_test_run_until(l, &w.done, 3000);
    iop_timer_stop(&w.t);
}

enum { NCLIENTS = 12, NLATE = 3, ROOM = 4 };

IOP_TEST(acceptor_emfile_shed_and_recover, be)
{
    iop_loop *l = iop_test_loop(be);
    iop_addr bound;
    int lfd = listen_on("127.0.0.1:0", NULL, &bound);
    struct server s;
    server_init(&s);

    /* Every client socket exists before the limit drops: clients never run
     * out of fds, only the server's accept does. */
    int cl[NCLIENTS + NLATE];
    for (int i = 0; i < NCLIENTS + NLATE; i++) {
        cl[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        CHECK(cl[i] >= 0);
    }
    struct rlimit old, low;
    CHECK(getrlimit(RLIMIT_NOFILE, &old) == 0);
    low = old;
    low.rlim_cur = limit_with_room(ROOM);
    CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);
    /* Started after the drop: io_uring reads the limit when the accept
     * request is submitted. */
    CHECK_OK(iop_acceptor_start(l, &s.acc, lfd, on_accept, on_error));
    int fit = free_below((int)low.rlim_cur);
    CHECK_EQ(fit, ROOM - 1); /* the spare has taken one */

    for (int i = 0; i < NCLIENTS; i++)
        CHECK(connect(cl[i], &bound.u.sa, bound.len) == 0 || errno == EINPROGRESS);
    run_until_shed(l, &s, (uint64_t)(NCLIENTS - fit));
    CHECK_EQ(s.naccepted, fit);
    CHECK_EQ(s.acc.shed, NCLIENTS - fit);
    CHECK_EQ(s.errors, 1);
    CHECK_EQ(s.last_err, -EMFILE);
    /* The shed clients were told at once; the others are still connected. */
    CHECK_EQ(count_shut_out(cl, NCLIENTS, NCLIENTS - fit, 2000), NCLIENTS - fit);

    /* Still out of fds: two more are shed on the next tries, and the error
     * callback stays quiet within the second (on_error checks the gap). */
    for (int i = NCLIENTS; i < NCLIENTS + 2; i++)
        CHECK(connect(cl[i], &bound.u.sa, bound.len) == 0 || errno == EINPROGRESS);
    run_until_shed(l, &s, (uint64_t)(NCLIENTS - fit + 2));
    CHECK_EQ(s.naccepted, fit);
    if (iop_test_now_ms() - s.first_error_ms < 900)
        CHECK_EQ(s.errors, 1);
    CHECK_EQ(count_shut_out(cl, NCLIENTS + 2, NCLIENTS - fit + 2, 2000), NCLIENTS - fit + 2);

    /* fds free up: accepting resumes by itself. */
    close_accepted(&s);
    s.target = 1;
    CHECK(connect(cl[NCLIENTS + 2], &bound.u.sa, bound.len) == 0 || errno == EINPROGRESS);
    run_until(l, &s.done, 3000);
    CHECK_EQ(s.naccepted, 1);
    CHECK_EQ(s.acc.accepted, fit + 1);
    CHECK(!shut_out(cl[NCLIENTS + 2]));

    CHECK(setrlimit(RLIMIT_NOFILE, &old) == 0);
    server_stop(l, &s);
    close_accepted(&s);
    for (int i = 0; i < NCLIENTS + NLATE; i++)
        close(cl[i]);
    close(lfd);
    iop_test_loop_free(l);
}

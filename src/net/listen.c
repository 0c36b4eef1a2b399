/* listen.c - listening sockets: create and bind, read the bound address
 * back, and take sockets inherited from systemd. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ioplex/net.h"

static int valid_addr(const iop_addr *a)
{
    int family = a->u.sa.sa_family;
    if (a->len > sizeof a->u)
        return 0;
    switch (a->kind) {
    case IOP_ADDR_TCP:
    case IOP_ADDR_UDP:
        if (a->dual && family == AF_INET && a->u.in4.sin_addr.s_addr != htonl(INADDR_ANY))
            return 0;
        return (family == AF_INET && a->len >= sizeof a->u.in4) ||
               (family == AF_INET6 && a->len >= sizeof a->u.in6);
    case IOP_ADDR_UNIX:
        return family == AF_UNIX && a->len > offsetof(struct sockaddr_un, sun_path) + 1;
    default:
        return 0;
    }
}

static int set_int(int fd, int level, int name, int value)
{
    return setsockopt(fd, level, name, &value, sizeof value) < 0 ? -errno : 0;
}

static int set_options(int fd, const iop_addr *a, const struct iop_listen_opts *opts)
{
    int rc = 0;
    if (a->kind == IOP_ADDR_TCP)
        rc = set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    if (rc == 0 && opts && opts->reuseport)
        rc = set_int(fd, SOL_SOCKET, SO_REUSEPORT, 1);
    if (rc == 0 && a->u.sa.sa_family == AF_INET6)
        rc = set_int(fd, IPPROTO_IPV6, IPV6_V6ONLY, !a->dual);
    return rc;
}

/* Is the Unix socket file at a's path stale (a socket nobody listens on)?
 * If so, remove it and return 1; 0 if it is alive or not a socket; -errno
 * if we cannot tell. */
static int unix_remove_stale(const iop_addr *a)
{
    char path[sizeof a->u.un.sun_path + 1];
    size_t n = a->len - offsetof(struct sockaddr_un, sun_path);
    n = strnlen(a->u.un.sun_path, n);
    memcpy(path, a->u.un.sun_path, n);
    path[n] = '\0';

    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 1 : -errno; /* gone meanwhile: bind again */
    if (!S_ISSOCK(st.st_mode))
        return 0; /* a regular file, a directory...: never ours to delete */
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (probe < 0)
        return -errno;
    /* Nonblocking: a live listener with a full backlog answers EAGAIN
     * instead of making us wait.  Only ECONNREFUSED means nobody is there;
     * EPROTOTYPE (a datagram socket), EACCES... mean someone is, or might be. */
    int rc = connect(probe, &a->u.sa, a->len);
    int err = errno;
    close(probe);
    if (rc == 0 || err != ECONNREFUSED)
        return 0;
    if (unlink(path) < 0 && errno != ENOENT)
        return -errno;
    return 1;
}

static int bind_addr(int fd, const iop_addr *a)
{
    if (bind(fd, &a->u.sa, a->len) == 0)
        return 0;
    int err = errno;
    int path = a->kind == IOP_ADDR_UNIX && a->u.un.sun_path[0] != '\0';
    if (err != EADDRINUSE || !path)
        return -err;
    int rc = unix_remove_stale(a);
    if (rc <= 0)
        return rc == 0 ? -EADDRINUSE : rc;
    return bind(fd, &a->u.sa, a->len) == 0 ? 0 : -errno;
}

static int listen_one(const iop_addr *addr, const struct iop_listen_opts *opts, int *fd_out)
{
    int type = addr->kind == IOP_ADDR_UDP ? SOCK_DGRAM : SOCK_STREAM;
    int backlog = opts && opts->backlog > 0 ? opts->backlog : SOMAXCONN;

    int fd = socket(addr->u.sa.sa_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int rc = set_options(fd, addr, opts);
    if (rc == 0)
        rc = bind_addr(fd, addr);
    if (rc == 0 && type == SOCK_STREAM && listen(fd, backlog) < 0)
        rc = -errno;
    if (rc < 0) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return 0;
}

/* `:PORT`: one [::] socket that takes IPv4 too (as ::ffff:a.b.c.d), so
 * that every client of this host finds the server, whichever family its
 * resolver picks for the name. */
static int listen_dual(const iop_addr *addr, const struct iop_listen_opts *opts, int *fd_out)
{
    iop_addr any6;
    memset(&any6, 0, sizeof any6);
    any6.kind = addr->kind;
    any6.dual = 1;
    any6.len = sizeof any6.u.in6;
    any6.u.in6.sin6_family = AF_INET6;
    any6.u.in6.sin6_addr = in6addr_any;
    any6.u.in6.sin6_port = addr->u.in4.sin_port;
    int rc = listen_one(&any6, opts, fd_out);
    if (rc != -EAFNOSUPPORT && rc != -EADDRNOTAVAIL)
        return rc;
    /* No IPv6 here (a kernel without it, or ipv6.disable): IPv4 is then
     * every interface there is. */
    return listen_one(addr, opts, fd_out);
}

int iop_listen(const iop_addr *addr, const struct iop_listen_opts *opts, int *fd_out)
{
    if (fd_out)
        *fd_out = -1;
    if (!addr || !fd_out || !valid_addr(addr) || (opts && opts->backlog < 0))
        return -EINVAL;
    if (addr->kind == IOP_ADDR_UNIX && opts && opts->reuseport)
        return -EOPNOTSUPP;
    if (addr->dual && addr->u.sa.sa_family == AF_INET)
        return listen_dual(addr, opts, fd_out);
    return listen_one(addr, opts, fd_out);
}

int iop_local_addr(int fd, iop_addr *out)
{
    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof *out);
    socklen_t len = sizeof out->u;
    int type;
    socklen_t tlen = sizeof type;
    if (getsockname(fd, &out->u.sa, &len) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0) {
        int err = errno;
        memset(out, 0, sizeof *out);
        return -err;
    }
    int kind = IOP_ADDR_NONE, rc = 0;
    switch (out->u.sa.sa_family) {
    case AF_INET:
    case AF_INET6:
        kind = type == SOCK_STREAM ? IOP_ADDR_TCP : type == SOCK_DGRAM ? IOP_ADDR_UDP : 0;
        break;
    case AF_UNIX:
        kind = type == SOCK_STREAM ? IOP_ADDR_UNIX : 0;
        break;
    default:
        rc = -EAFNOSUPPORT;
    }
    if (rc == 0 && kind == IOP_ADDR_NONE)
        rc = -EPROTONOSUPPORT;
    if (rc < 0) {
        memset(out, 0, sizeof *out);
        return rc;
    }
    out->kind = kind;
    out->len = len;
    if (out->u.sa.sa_family == AF_INET6) {
        int v6only = 1;
        socklen_t olen = sizeof v6only;
        if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &olen) == 0)
            out->dual = !v6only;
    }
    return 0;
}

/* A decimal number in [min, max], nothing else. */
static int env_number(const char *s, long min, long max, long *out)
{
    if (!s || !*s)
        return -EINVAL;
    long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -EINVAL;
        if (v > max)
            return -EINVAL;
        v = v * 10 + (*s - '0');
    }
    if (v < min || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

static int take_fds(long n)
{
    for (int fd = IOP_LISTEN_FDS_START; fd < IOP_LISTEN_FDS_START + n; fd++) {
        int fdfl = fcntl(fd, F_GETFD);
        int fl = fcntl(fd, F_GETFL);
        if (fdfl < 0 || fl < 0)
            return -errno;
        if (!(fdfl & FD_CLOEXEC) && fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) < 0)
            return -errno;
        if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
            return -errno;
    }
    return 0;
}

int iop_listen_fds(void)
{
    const char *pid_s = getenv("LISTEN_PID");
    const char *fds_s = getenv("LISTEN_FDS");
    long pid = 0, n = 0;
    int rc = 0;
    if (pid_s && fds_s) {
        rc = env_number(pid_s, 1, INT_MAX, &pid);
        if (rc == 0 && pid == (long)getpid()) {
            rc = env_number(fds_s, 0, INT_MAX - IOP_LISTEN_FDS_START, &n);
            if (rc == 0)
                rc = take_fds(n);
            if (rc == 0)
                rc = (int)n;
        }
    }
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    return rc;
}

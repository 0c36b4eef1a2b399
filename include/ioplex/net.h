/* ioplex/net.h - addresses, listening sockets and accepting connections.
 *
 * Four parts, each usable alone:
 *
 *   iop_addr        an address in the forms of the command line (SPEC §2),
 *                   parsed and formatted back exactly as the `listening ADDR`
 *                   line prints it
 *   iop_listen      a bound, listening (TCP, Unix) or bound (UDP) socket
 *   iop_listen_fds  listening sockets inherited from systemd (LISTEN_FDS)
 *   iop_acceptor    accepts connections of a listening socket on a loop, on
 *                   every backend, and survives running out of fds
 *
 * Address forms (the text is case-sensitive):
 *
 *   HOST:PORT        TCP.  HOST is a dotted-quad IPv4 address or a name, which
 *                    iop_addr_parse() resolves (the first IPv4 address, else
 *                    the first IPv6 one).
 *   :PORT            TCP on every interface, IPv6 and IPv4: iop_listen()
 *                    binds one [::] socket with IPV6_V6ONLY off (IPv4
 *                    clients arrive as ::ffff:a.b.c.d), or 0.0.0.0 where
 *                    IPv6 is absent.  Parsed, it is 0.0.0.0:PORT marked
 *                    `dual` (so a client connecting to it reaches this host
 *                    over IPv4, as before).
 *   0.0.0.0:PORT     TCP on every IPv4 interface only.
 *   [::]:PORT        TCP on every IPv6 interface only: an explicit address
 *                    means that family alone (as nginx's [::]:80), so
 *                    [::]:P and 0.0.0.0:P can be bound side by side.
 *   [V6]:PORT        TCP over IPv6; V6 may carry a zone, [fe80::1%2]:80 (an
 *                    interface name after % is looked up by iop_addr_parse()).
 *   unix:PATH        a Unix stream socket at PATH (1 to 107 bytes).
 *   unix:@NAME       a Linux abstract Unix socket (no file), NAME 1-107 bytes.
 *   udp:HOST:PORT    UDP; udp::PORT (dual-stack) and udp:[V6]:PORT as above.
 *
 * PORT is decimal, 0 to 65535; 0 asks the kernel for a free port (read it
 * back with iop_local_addr()).  A host literally named "unix" or "udp" must
 * be written as its address.
 *
 * Errors: 0 or a negative errno (iop_strerror() words it); each function says
 * which ones mean what.  Nothing here prints, exits, or raises signals.
 */
#ifndef IOPLEX_NET_H
#define IOPLEX_NET_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "ioplex/common.h"
#include "ioplex/loop.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- addresses -------------------------------------------------------- */

enum iop_addr_kind {
    IOP_ADDR_NONE = 0, /* what a failed parse leaves */
    IOP_ADDR_TCP,      /* AF_INET or AF_INET6, SOCK_STREAM */
    IOP_ADDR_UNIX,     /* AF_UNIX, SOCK_STREAM */
    IOP_ADDR_UDP,      /* AF_INET or AF_INET6, SOCK_DGRAM */
};

/* Room for any address iop_addr_format() writes, NUL included. */
#define IOP_ADDR_STRLEN 128

/* A parsed address: a plain value, copy it freely.  u.sa and len go straight
 * to bind(2) or connect(2).  For IOP_ADDR_UNIX, u.un.sun_path holds the path,
 * NUL-terminated; an abstract name has sun_path[0] == '\0' and is
 * len - offsetof(struct sockaddr_un, sun_path) - 1 bytes long. */
typedef struct iop_addr {
    int kind;      /* enum iop_addr_kind */
    socklen_t len; /* bytes of u that are meaningful */
    /* TCP/UDP: both families.  With AF_INET (only 0.0.0.0, as `:PORT`
     * parses) iop_listen() binds [::] dual-stack, else 0.0.0.0; with
     * AF_INET6 the socket is not IPV6_V6ONLY (what iop_local_addr() reports
     * for such a socket, so binding its address again gives the same). */
    int dual;
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
        struct sockaddr_un un;
        struct sockaddr_storage ss;
    } u;
} iop_addr;

/* Parse a NUL-terminated address in one of the forms above into *out,
 * resolving host names (getaddrinfo: may block on DNS; `localhost` comes
 * from /etc/hosts).  *out is zeroed first, so after a failure it is
 * IOP_ADDR_NONE, never half-filled.
 *
 *   -EINVAL        syntax: empty, no port, empty or non-decimal port, a bad
 *                  IPv4 literal ("1.2.3", "1.2.3.256"), an IPv6 address not
 *                  in brackets, unbalanced brackets, an empty Unix path,
 *                  text or out NULL
 *   -ERANGE        port above 65535
 *   -ENAMETOOLONG  Unix path or abstract name over 107 bytes
 *   -ENXIO         the host name (or IPv6 zone name) is not known
 *   -EAGAIN        the resolver failed for now (try again later)
 *   -EAFNOSUPPORT  the name has no IPv4 or IPv6 address
 *   -ENOMEM
 *
 * Thread-safe. */
int iop_addr_parse(const char *text, iop_addr *out);

/* The same without any lookup: only literal addresses (a host name, or an
 * IPv6 zone given as an interface name, is -ENXIO).  Never blocks; no
 * system calls.  Thread-safe. */
int iop_addr_parse_numeric(const char *text, iop_addr *out);

/* Flags for iop_addr_parse_len(). */
#define IOP_ADDR_NUMERIC 0x01u /* no name lookups, as iop_addr_parse_numeric() */

/* Parse exactly len bytes at text (no NUL needed; text is not read past
 * len).  A NUL byte inside them is -EINVAL.  The two functions above are
 * this with strlen(text).  Thread-safe. */
int iop_addr_parse_len(const char *text, size_t len, unsigned flags, iop_addr *out);

/* Write addr as text, NUL-terminated, in the form parsing reads back to the
 * same address: 127.0.0.1:43125, [::1]:8000, [fe80::1%2]:80 (zone as a
 * number), :8000 (dual, as parsed), unix:/tmp/x.sock, unix:@name,
 * udp:127.0.0.1:9000.  The one exception: a bound dual-stack socket
 * (iop_local_addr(): AF_INET6, dual) is written [::]:PORT, the `listening`
 * line users know from other servers, which parses back v6-only.  An unnamed
 * Unix socket (a connecting client's) is "unix:".  Returns the length
 * written (without the NUL), -ENOSPC if buflen is too small (buf then holds
 * "" if buflen > 0), -EINVAL if addr is not a valid address of its kind (or
 * is an abstract name containing a NUL byte).  IOP_ADDR_STRLEN always
 * suffices.  Thread-safe. */
int iop_addr_format(const iop_addr *addr, char *buf, size_t buflen);

/* ---- listening sockets ------------------------------------------------ */

/* Options for iop_listen(); a zeroed struct (or NULL) means the defaults. */
struct iop_listen_opts {
    int backlog;   /* listen(2) backlog; 0: SOMAXCONN (the kernel caps it at
                    * net.core.somaxconn).  Ignored for UDP. */
    int reuseport; /* non-zero: SO_REUSEPORT, so several sockets (one per
                    * worker thread or process) bind the same port and the
                    * kernel spreads connections or datagrams among them.
                    * TCP and UDP only. */
};

/* Create a socket for addr, bind it and, for TCP and Unix, listen.  On
 * success *fd_out is the new socket, O_NONBLOCK and FD_CLOEXEC, and yours to
 * close; on failure it is -1 and nothing is left open.
 *
 * Always: TCP sets SO_REUSEADDR (a restarted server can bind while old
 * connections linger in TIME_WAIT); UDP does not (on Linux it would let a
 * second process bind the same port and steal datagrams).  IPv6 sockets
 * are IPV6_V6ONLY unless addr is dual, so [::]:P and 0.0.0.0:P may both be
 * bound.  A dual 0.0.0.0 (`:PORT`) is bound as [::] dual-stack; where
 * IPv6 is absent (no AF_INET6 sockets: EAFNOSUPPORT, or :: cannot be
 * bound: EADDRNOTAVAIL) as 0.0.0.0.  Read back what it became with
 * iop_local_addr().
 *
 * Unix: if PATH exists, it is replaced only if it is a socket that nobody
 * listens on (a connect attempt is refused) - the file a crashed server
 * left.  A live listener, or a file that is not a socket, is -EADDRINUSE.
 * (Two servers starting at the same instant on one stale path may race.)
 * Closing the fd leaves the file; unlink it if you want it gone.
 *
 *   -EINVAL        addr or fd_out NULL, addr not a valid address, backlog < 0
 *   -EOPNOTSUPP    reuseport on a Unix address (share one fd instead)
 *   -EADDRINUSE    port in use, or a live Unix listener / non-socket at PATH
 *   -EADDRNOTAVAIL the IP address is not one of this host's
 *   -EACCES        privileged port, or no permission on the Unix directory
 *   -EAFNOSUPPORT  no IPv6 in this kernel
 *   -ENOENT        the Unix socket's directory does not exist
 *   -EMFILE, -ENFILE, -ENOMEM
 *
 * Thread-safe. */
int iop_listen(const iop_addr *addr, const struct iop_listen_opts *opts, int *fd_out);

/* The address fd is bound to, with the real port when it was bound to port
 * 0: what the `listening ADDR` line prints.  The kind comes from the
 * socket's type (TCP, UDP, or Unix stream); dual is set for an IPv6 socket
 * that is not IPV6_V6ONLY.  On failure *out is zeroed.
 *   -EBADF, -ENOTSOCK   not an open socket
 *   -EAFNOSUPPORT       not an IPv4, IPv6 or Unix socket
 *   -EPROTONOSUPPORT    a socket type this layer does not serve (raw, Unix
 *                       datagram, seqpacket)
 * Thread-safe. */
int iop_local_addr(int fd, iop_addr *out);

/* systemd socket activation: the first inherited fd. */
#define IOP_LISTEN_FDS_START 3

/* Take the listening sockets passed by systemd (or any launcher speaking its
 * protocol): when LISTEN_PID is this process's pid, they are fds
 * IOP_LISTEN_FDS_START .. IOP_LISTEN_FDS_START + n - 1, n = LISTEN_FDS.
 * Each is made FD_CLOEXEC and O_NONBLOCK, and from then on is yours.
 * iop_local_addr() tells what each one is.
 *
 * Returns n (0 when nothing was passed to this process: no variables, or
 * LISTEN_PID names another process), -EINVAL if a variable is malformed,
 * -EBADF if one of the announced fds is not open.  In every case LISTEN_PID,
 * LISTEN_FDS and LISTEN_FDNAMES are removed from the environment, so that
 * children do not inherit them.
 *
 * Not thread-safe (it changes the environment): call it at startup, before
 * other threads exist. */
int iop_listen_fds(void);

/* ---- the acceptor ----------------------------------------------------- */

/* An acceptor takes connections from a listening socket on a loop and hands
 * each one to a callback.  On readiness backends it calls accept4() when the
 * socket is readable, at most IOP_ACCEPT_BUDGET times per wakeup so that one
 * busy listener cannot starve other fds (level-triggered watchers are told
 * again; on an edge-triggered loop a deferred callback carries on).  With
 * IOP_CAP_COMPLETION (io_uring) one multishot accept request stays armed
 * in the kernel and is re-armed whenever a completion ends it.
 *
 * Out of fds (EMFILE, ENFILE): the acceptor keeps one spare fd open on
 * /dev/null.  When accept fails for lack of fds it closes the spare,
 * accepts and at once closes the connections waiting in the backlog (at
 * most IOP_ACCEPT_BUDGET: their clients see EOF instead of hanging), opens
 * the spare again, stops accepting for IOP_ACCEPT_BACKOFF_MS (rather than
 * spinning on an fd that stays readable), then tries again.  This repeats
 * while fds are short and ends by itself when they free up.  The error
 * callback hears of it at most once a second; `shed` counts the
 * connections closed this way.  ENOBUFS and ENOMEM back off the same way
 * without shedding.  (Another thread opening fds can take the spare's slot
 * in between: the shedding then waits for the next try.)  Note: io_uring
 * reads RLIMIT_NOFILE when the accept request is submitted, so a limit
 * lowered while the request is armed applies from its next re-arm.
 *
 * Memory: the struct is yours, must stay valid and unmoved from start until
 * close_cb runs (or, with no close_cb, until the loop is done with it: see
 * iop_acceptor_stop).  The listening fd stays yours: the acceptor never
 * closes it.  Each accepted fd is handed over: the callback owns it.
 *
 * Threads: every call on the loop's thread.  Callbacks run there too, never
 * before the call that arms them returns. */

#define IOP_ACCEPT_BUDGET     64  /* accept4() calls per wakeup, readiness */
#define IOP_ACCEPT_BACKOFF_MS 100 /* pause after EMFILE/ENFILE/ENOBUFS/ENOMEM */

typedef struct iop_acceptor iop_acceptor;

/* A new connection: fd is a connected socket, O_NONBLOCK and FD_CLOEXEC,
 * and now yours (close it).  May stop or pause the acceptor. */
typedef void (*iop_accept_cb)(iop_acceptor *acc, int fd);

/* Something went wrong with accepting; err is a negative errno.
 *   -EMFILE, -ENFILE, -ENOBUFS, -ENOMEM   resources: the acceptor sheds and
 *                     backs off (see above) and recovers by itself.  Told at
 *                     most once a second.
 *   anything else     (-EBADF, -EINVAL, -ENOTSOCK...: the listening socket
 *                     is broken) the acceptor accepts nothing more; stop it.
 * Transient per-connection errors (ECONNABORTED, EPROTO, EPERM, network
 * errors) are skipped silently.  May stop or pause the acceptor. */
typedef void (*iop_acceptor_error_cb)(iop_acceptor *acc, int err);

/* The acceptor is idle: the struct may be freed or started again. */
typedef void (*iop_acceptor_close_cb)(iop_acceptor *acc);

struct iop_acceptor {
    void *data; /* public: yours */
    /* read-only */
    int fd;            /* the listening socket */
    uint64_t accepted; /* connections handed to the callback */
    uint64_t shed;     /* connections closed at once for lack of fds */
    /* private */
    iop_loop *loop;
    iop_accept_cb cb;
    iop_acceptor_error_cb error_cb;
    iop_acceptor_close_cb close_cb;
    unsigned state;
    int spare;
    uint64_t reported_at;
    int *held; /* completion mode: fds accepted while paused */
    unsigned nheld, capheld;
    iop_io io;
    iop_timer backoff;
    iop_defer kick;
    iop_op op;
};

/* Start accepting connections of fd, a listening stream socket (TCP or
 * Unix), and call cb with each.  fd is made O_NONBLOCK if it is not.
 * error_cb may be NULL (errors then go unreported; behaviour is the same).
 * Before its first start the struct must be zeroed (`iop_acceptor a = {0}`,
 * calloc); acc->data is kept, everything else is set here.  Opens the spare
 * fd (if that fails for lack of fds the acceptor starts anyway and opens it
 * later).
 *
 *   -EINVAL    loop, acc or cb NULL, or fd is not listening (or is UDP)
 *   -EBADF, -ENOTSOCK   fd is not an open socket
 *   -EBUSY     acc is started, or stopping and its close_cb has not run
 *   -ERANGE    select backend and fd >= FD_SETSIZE
 *   -EEXIST    readiness backend and fd is watched by another iop_io
 */
int iop_acceptor_start(iop_loop *loop, iop_acceptor *acc, int fd, iop_accept_cb cb,
                       iop_acceptor_error_cb error_cb);

/* Stop and resume taking connections (e.g. at --max-conns): while paused,
 * new connections wait in the kernel's backlog.  No accept callback runs
 * after pause returns.  On io_uring, connections the kernel had already
 * accepted when the pause reached it are kept and handed over after resume.
 * Both are cheap and idempotent.  -EINVAL if the acceptor is not started. */
int iop_acceptor_pause(iop_acceptor *acc);
int iop_acceptor_resume(iop_acceptor *acc);

/* Stop accepting for good; safe from any of its callbacks.  No accept or
 * error callback runs after it returns.  Connections accepted but not yet
 * handed over are closed, as is the spare fd.  close_cb (may be NULL) then
 * runs once, from the loop and never inside this call, when the loop holds
 * no pointer to acc any more: on io_uring that is when the cancelled accept
 * request has completed, which keeps the loop alive (iop_loop_alive() > 0)
 * until then.  Free or restart the struct only in or after close_cb; with a
 * NULL close_cb, only after the loop has run until iop_loop_alive() counts
 * nothing of it.  Close the listening fd after close_cb too (closing it
 * earlier is safe, but a connection arriving meanwhile is then accepted and
 * closed).  Stopping an acceptor that is not started, or already stopping,
 * is a no-op (the first close_cb stands).  Always stop before freeing the
 * loop: a paused acceptor on a readiness backend does not keep the loop
 * busy, but its spare fd is released only here. */
void iop_acceptor_stop(iop_acceptor *acc, iop_acceptor_close_cb close_cb);

#ifdef __cplusplus
}
#endif

#endif

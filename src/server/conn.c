/* conn.c - the blocking-style iop_conn calls, written once over a model's
 * raw operations (see conn_int.h), and the raw operations of connections
 * that wait in poll(2) (iterative, thread, fork).
 *
 * Partial results: readline and recv_exact hand bytes to the caller's
 * buffer as they arrive, so an error in the middle of a line or of an
 * exact read (-ETIMEDOUT, -ECANCELED, -ECONNRESET) loses the bytes of it
 * read so far.  Such an error ends the conversation anyway; a handler that
 * wants to retry after -ETIMEDOUT must read with iop_conn_recv.
 *
 * SIGPIPE: send uses MSG_NOSIGNAL.  sendfile(2) has no such flag: where the
 * process ignores SIGPIPE (looked up once per connection, at its first
 * sendfile) it is called as it is; otherwise each call blocks SIGPIPE in
 * the calling thread and, if the kernel raised one for us (-EPIPE), takes
 * it back with sigtimedwait before unblocking, two system calls more per
 * call: the process survives a vanished peer either way. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "server/conn_int.h"
#include "server/server_int.h"

#define SENDFILE_MAX (1u << 30) /* bytes per sendfile(2) call */

void iop__conn_init(iop_conn *c, iop_server *srv, const struct iop__conn_ops *ops, int fd,
                    int listener, const atomic_int *stop_now)
{
    memset(c, 0, sizeof *c);
    c->ops = ops;
    c->srv = srv;
    c->data = srv->cfg.data;
    c->stop_now = stop_now;
    c->fd = fd;
    c->listener = listener;
}

void iop_conn_set_idle(iop_conn *c, int idle)
{
    c->idle = idle != 0;
}

void iop_conn_set_timeout(iop_conn *c, unsigned ms)
{
    c->timeout_ms = ms;
}

unsigned iop__conn_wait_ms(const iop_conn *c)
{
    return c->timeout_ms ? c->timeout_ms : c->srv->cfg.idle_timeout_ms;
}

int iop__conn_stop_idle(const iop_conn *c)
{
    return c->idle && iop_server_stopping(c->srv) != IOP__RUNNING;
}

void iop__conn_fini(iop_conn *c)
{
    free(c->rbuf);
    c->rbuf = NULL;
    iop_tls_free(c->tls);
    c->tls = NULL;
    c->rpos = c->rlen = 0;
}

int iop__conn_serve(iop_conn *c)
{
    const struct iop_handler *h = c->srv->cfg.handler;
    iop_tls_ctx *tls = c->srv->ls[c->listener].tls;
    if (!h->handle || (tls && iop__conn_tls_start(c, tls) < 0))
        return 1;
    if (h->verify && h->verify(c)) {
        iop__conn_tls_end(c);
        return 1;
    }
    if (h->setup)
        h->setup(c);
    h->handle(c);
    if (h->finish)
        h->finish(c);
    iop__conn_tls_end(c);
    return 0;
}

/* ---- raw operations for readiness ---------------------------------------- */

/* One non-blocking recv (IOP_READ) or send, waiting through EAGAIN. */
static ssize_t io_ready(iop_conn *c, void *buf, size_t len, unsigned events)
{
    for (;;) {
        ssize_t n = events == IOP_READ ? recv(c->fd, buf, len, MSG_DONTWAIT)
                                       : send(c->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int rc = c->ops->wait(c, events);
        if (rc < 0)
            return rc;
    }
}

ssize_t iop__conn_recv_ready(iop_conn *c, void *buf, size_t len)
{
    return io_ready(c, buf, len, IOP_READ);
}

ssize_t iop__conn_send_ready(iop_conn *c, const void *buf, size_t len)
{
    return io_ready(c, (void *)(uintptr_t)buf, len, IOP_WRITE);
}

/* After a short read the socket is almost surely empty: wait first rather
 * than pay for a recv that says EAGAIN (one system call per message). */
ssize_t iop__conn_recv_drained(iop_conn *c, void *buf, size_t len)
{
    if (c->drained) {
        int rc = c->ops->wait(c, IOP_READ);
        if (rc < 0)
            return rc;
    }
    ssize_t n = iop__conn_recv_ready(c, buf, len);
    c->drained = n > 0 && (size_t)n < len;
    return n;
}

/* ---- the common part ------------------------------------------------------ */

static int stopped(iop_conn *c)
{
    if (!c->cancelled && c->stop_now && atomic_load(c->stop_now))
        c->cancelled = 1;
    return c->cancelled;
}

/* An EOF or error seen while the server stops now is the stop's doing (it
 * shut the socket down): say so. */
static ssize_t outcome(iop_conn *c, ssize_t n)
{
    if (n == -ECANCELED)
        c->cancelled = 1;
    if (n <= 0 && stopped(c))
        return -ECANCELED;
    return n;
}

static ssize_t raw_recv(iop_conn *c, void *buf, size_t len)
{
    return outcome(c, c->tls ? iop__conn_tls_recv(c, buf, len) : c->ops->recv(c, buf, len));
}

static ssize_t raw_send(iop_conn *c, const void *buf, size_t len)
{
    return outcome(c, c->tls ? iop__conn_tls_send(c, buf, len) : c->ops->send(c, buf, len));
}

/* Hand out up to len buffered bytes. */
static size_t take(iop_conn *c, void *buf, size_t len)
{
    size_t n = c->rlen - c->rpos;
    if (n > len)
        n = len;
    memcpy(buf, c->rbuf + c->rpos, n);
    c->rpos += n;
    return n;
}

/* Read ahead into the (empty) buffer: > 0, 0 at EOF, -errno. */
static ssize_t fill(iop_conn *c)
{
    if (!c->rbuf && !(c->rbuf = malloc(IOP__CONN_RBUF)))
        return -ENOMEM;
    c->rpos = c->rlen = 0;
    ssize_t n = raw_recv(c, c->rbuf, IOP__CONN_RBUF);
    if (n > 0)
        c->rlen = (size_t)n;
    return n;
}

/* ---- server.h ------------------------------------------------------------- */

iop_server *iop_conn_server(const iop_conn *c)
{
    return c->srv;
}

void *iop_conn_data(const iop_conn *c)
{
    return c->data;
}

void iop_conn_set_data(iop_conn *c, void *data)
{
    c->data = data;
}

int iop_conn_listener(const iop_conn *c)
{
    return c->listener;
}

int iop_conn_fd(const iop_conn *c)
{
    return c->fd;
}

int iop_conn_peer(const iop_conn *c, iop_addr *out)
{
    memset(out, 0, sizeof *out);
    socklen_t len = sizeof out->u;
    if (getpeername(c->fd, &out->u.sa, &len) < 0)
        return -errno;
    out->len = len;
    out->kind = out->u.sa.sa_family == AF_UNIX ? IOP_ADDR_UNIX : IOP_ADDR_TCP;
    return 0;
}

ssize_t iop_conn_recv(iop_conn *c, void *buf, size_t len)
{
    if (stopped(c))
        return -ECANCELED;
    if (len == 0)
        return 0;
    if (c->rpos < c->rlen)
        return (ssize_t)take(c, buf, len);
    return raw_recv(c, buf, len);
}

ssize_t iop_conn_send(iop_conn *c, const void *buf, size_t len)
{
    if (stopped(c))
        return -ECANCELED;
    if (len == 0)
        return 0;
    return raw_send(c, buf, len);
}

int iop_conn_sendall(iop_conn *c, const void *buf, size_t len)
{
    if (stopped(c))
        return -ECANCELED;
    const char *p = buf;
    while (len > 0) {
        ssize_t n = raw_send(c, p, len);
        if (n < 0)
            return (int)n;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

ssize_t iop_conn_recv_exact(iop_conn *c, void *buf, size_t len)
{
    if (stopped(c))
        return -ECANCELED;
    char *p = buf;
    size_t got = c->rpos < c->rlen ? take(c, p, len) : 0;
    while (got < len) {
        /* Small reads go through the buffer (a 4-byte header then its body
         * is one recv, not two); large ones straight into the caller's. */
        size_t want = len - got;
        ssize_t n = want < IOP__CONN_RBUF ? fill(c) : raw_recv(c, p + got, want);
        if (n == 0)
            return got ? -EPIPE : 0;
        if (n < 0)
            return n;
        got += want < IOP__CONN_RBUF ? take(c, p + got, want) : (size_t)n;
    }
    return (ssize_t)len;
}

/* A line through '\n'.  With no '\n' in the first max bytes those max bytes
 * are consumed (they are in buf) and -EMSGSIZE returned; the next call goes
 * on from there.  max == 0: -EINVAL. */
ssize_t iop_conn_readline(iop_conn *c, char *buf, size_t max)
{
    if (max == 0)
        return -EINVAL;
    if (stopped(c))
        return -ECANCELED;
    size_t n = 0;
    for (;;) {
        if (c->rpos < c->rlen) {
            size_t avail = c->rlen - c->rpos, room = max - n;
            size_t look = avail < room ? avail : room;
            const char *nl = memchr(c->rbuf + c->rpos, '\n', look);
            n += take(c, buf + n, nl ? (size_t)(nl - (c->rbuf + c->rpos)) + 1 : look);
            if (nl)
                return (ssize_t)n;
            if (n == max)
                return -EMSGSIZE;
        }
        ssize_t r = fill(c);
        if (r == 0)
            return (ssize_t)n; /* EOF: the last line as it is, or 0 */
        if (r < 0)
            return r;
    }
}

/* sendfile(2) with SIGPIPE held back in this thread (see the top). */
static ssize_t sendfile_nosig(iop_conn *c, int out, int in, off_t *off, size_t n)
{
    if (!c->sigpipe) {
        struct sigaction sa;
        int ign = sigaction(SIGPIPE, NULL, &sa) == 0 && !(sa.sa_flags & SA_SIGINFO) &&
                  sa.sa_handler == SIG_IGN;
        c->sigpipe = ign ? 1 : 2;
    }
    if (c->sigpipe == 1)
        return sendfile(out, in, off, n);
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t r = sendfile(out, in, off, n);
    int err = errno;
    if (r < 0 && err == EPIPE && !sigismember(&old, SIGPIPE)) {
        /* Unblocked before, so nothing else was pending: this one is ours. */
        const struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = err;
    return r;
}

int iop_conn_sendfile(iop_conn *c, int fd, off_t off, size_t len)
{
    if (stopped(c))
        return -ECANCELED;
    if (c->tls)
        return (int)outcome(c, iop__conn_tls_sendfile(c, fd, off, len));
    while (len > 0) {
        ssize_t n = sendfile_nosig(c, c->fd, fd, &off, len < SENDFILE_MAX ? len : SENDFILE_MAX);
        int rc;
        if (n > 0) {
            len -= (size_t)n;
            continue;
        }
        if (n == 0)
            rc = -EIO; /* the file is shorter than promised */
        else if (errno == EINTR)
            continue;
        else if (errno == EAGAIN || errno == EWOULDBLOCK)
            rc = c->ops->wait(c, IOP_WRITE);
        else
            rc = -errno;
        if (rc < 0)
            return (int)outcome(c, rc);
    }
    return 0;
}

int iop_conn_shutdown(iop_conn *c)
{
    if (c->tls)
        return iop__conn_tls_shutdown(c);
    return shutdown(c->fd, SHUT_WR) < 0 ? -errno : 0;
}

/* ---- waiting in poll(2) (iterative, thread, fork) ------------------------- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* async-signal-safe */
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void poke(int efd)
{
    uint64_t one = 1;
    ssize_t n = write(efd, &one, sizeof one);
    (void)n; /* only fails when the counter is full: readable anyway */
}

int iop__stop_fds_open(struct iop__stop_fds *st)
{
    atomic_init(&st->now, 0);
    atomic_init(&st->grace_at, 0);
    st->nowfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    st->gracefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return st->nowfd < 0 || st->gracefd < 0 ? -errno : 0;
}

void iop__stop_fds_close(struct iop__stop_fds *st)
{
    if (st->nowfd >= 0)
        close(st->nowfd);
    if (st->gracefd >= 0)
        close(st->gracefd);
    st->nowfd = st->gracefd = -1;
}

void iop__stop_fds_notify(struct iop__stop_fds *st, int stopping, unsigned grace_ms)
{
    if (stopping >= IOP__GRACEFUL) {
        uint64_t zero = 0;
        atomic_compare_exchange_strong(&st->grace_at, &zero, now_ms() + grace_ms);
        poke(st->gracefd);
    }
    if (stopping >= IOP__NOW) {
        atomic_store(&st->now, 1);
        poke(st->nowfd);
    }
}

/* -ECANCELED, and every later call of the conn fails the same way. */
static int cancel(iop_conn *c)
{
    c->cancelled = 1;
    return -ECANCELED;
}

/* The poll(2) timeout for the nearest of the idle deadline (idle_at) and
 * the grace deadline; 0 when one of them has passed (*which says which). */
static int wait_timeout(struct iop__pconn *pc, uint64_t idle_at, int *grace_over)
{
    uint64_t t = now_ms(), due = idle_at;
    uint64_t grace_at = pc->grace_seen ? atomic_load(&pc->stop->grace_at) : 0;
    *grace_over = 0;
    if (grace_at && (!due || grace_at < due)) {
        due = grace_at;
        *grace_over = 1;
    }
    if (!due)
        return -1;
    if (due <= t)
        return 0;
    return due - t > INT32_MAX ? INT32_MAX : (int)(due - t);
}

static int poll_wait(iop_conn *c, unsigned events)
{
    struct iop__pconn *pc = (struct iop__pconn *)c;
    const struct iop__stop_fds *st = pc->stop;
    unsigned idle = iop__conn_wait_ms(c);
    uint64_t idle_at = idle ? now_ms() + idle : 0;
    for (;;) {
        /* grace_seen too: a fork child's copy of the server never sees
         * the parent's stopping state change, only the shared eventfd. */
        if (c->cancelled || atomic_load(&st->now) || iop__conn_stop_idle(c) ||
            (c->idle && pc->grace_seen))
            return cancel(c);
        int grace_over, timeout = wait_timeout(pc, idle_at, &grace_over);
        if (timeout == 0)
            return grace_over ? cancel(c) : -ETIMEDOUT;
        short want = (short)((events & IOP_READ ? POLLIN : 0) | (events & IOP_WRITE ? POLLOUT : 0));
        struct pollfd p[3] = {{c->fd, want, 0}, {st->nowfd, POLLIN, 0}, {st->gracefd, POLLIN, 0}};
        int r = poll(p, pc->grace_seen ? 2 : 3, timeout);
        if (r < 0 && errno != EINTR)
            return -errno;
        if (r <= 0)
            continue; /* the deadlines are checked above */
        if (p[1].revents)
            return cancel(c);
        if (!pc->grace_seen && p[2].revents)
            pc->grace_seen = 1;
        if (p[0].revents)
            return 0; /* ready, or an error the next call will tell */
    }
}

/* SO_RCVTIMEO for a wait of `left` ms (0: none).  A shorter setting is
 * kept when within 8x (recv wakes early and the caller sleeps again), so
 * that a handler alternating two timeouts does not pay a system call for
 * each wait; a longer one never is. */
static int set_rcvtimeo(struct iop__pconn *pc, uint64_t left)
{
    unsigned cur = pc->rcvtimeo;
    if (left ? cur && cur <= left && (uint64_t)cur * 8 >= left : !cur)
        return 0;
    unsigned ms = left > UINT32_MAX ? UINT32_MAX : (unsigned)left;
    struct timeval tv = {(time_t)(ms / 1000u), (suseconds_t)(ms % 1000u) * 1000};
    if (setsockopt(pc->conn.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0)
        return -errno;
    pc->rcvtimeo = ms;
    return 0;
}

/* Socket empty and blocking: sleep in recv(2).  An EOF while the server
 * stops is the model's shutdown(2) (see conn_int.h), so it cancels. */
static ssize_t recv_asleep(struct iop__pconn *pc, void *buf, size_t len)
{
    iop_conn *c = &pc->conn;
    unsigned idle = iop__conn_wait_ms(c);
    uint64_t idle_at = idle ? now_ms() + idle : 0;
    for (;;) {
        uint64_t t = now_ms();
        if (idle_at && t >= idle_at)
            return -ETIMEDOUT;
        int rc = set_rcvtimeo(pc, idle_at ? idle_at - t : 0);
        if (rc < 0)
            return rc;
        /* Published before the stop check, and the model's stop stores the
         * stop before it reads `parked`: one of the two sees the other. */
        atomic_store(&pc->parked, c->idle);
        if (c->cancelled || atomic_load(&pc->stop->now) || iop__conn_stop_idle(c)) {
            atomic_store(&pc->parked, 0);
            return cancel(c);
        }
        ssize_t n = recv(c->fd, buf, len, 0);
        int err = errno;
        atomic_store(&pc->parked, 0);
        if (n > 0)
            return n;
        if (n == 0)
            return atomic_load(&pc->stop->now) || iop__conn_stop_idle(c) ? cancel(c) : 0;
        if (err != EINTR && err != EAGAIN && err != EWOULDBLOCK)
            return -err;
    }
}

/* A blocking socket that is probably empty sleeps in recv(2) itself. */
static ssize_t poll_recv(iop_conn *c, void *buf, size_t len)
{
    struct iop__pconn *pc = (struct iop__pconn *)c;
    if (!c->drained || !pc->blocking)
        return iop__conn_recv_drained(c, buf, len);
    ssize_t n = recv_asleep(pc, buf, len);
    c->drained = n > 0 && (size_t)n < len;
    return n;
}

static const struct iop__conn_ops poll_ops = {
    .recv = poll_recv,
    .send = iop__conn_send_ready,
    .wait = poll_wait,
};

void iop__pconn_init(struct iop__pconn *pc, iop_server *srv, int fd, int listener,
                     const struct iop__stop_fds *stop)
{
    memset(pc, 0, sizeof *pc);
    iop__conn_init(&pc->conn, srv, &poll_ops, fd, listener, &stop->now);
    pc->stop = stop;
}

void iop__pconn_set_blocking(struct iop__pconn *pc)
{
    int fd = pc->conn.fd, fl = fcntl(fd, F_GETFL);
    pc->blocking = fl >= 0 && fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) == 0;
    /* sendfile(2) has no MSG_DONTWAIT: bound its sleep by the idle timeout
     * (it then waits in poll for the rest, as on EAGAIN before). */
    unsigned idle = pc->conn.srv->cfg.idle_timeout_ms;
    if (pc->blocking && idle) {
        struct timeval tv = {(time_t)(idle / 1000u), (suseconds_t)(idle % 1000u) * 1000};
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
}

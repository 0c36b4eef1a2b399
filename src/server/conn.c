/* conn.c - the blocking-style iop_conn calls, written once over a model's
 * raw operations (see conn_int.h).
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
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
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

ssize_t iop__conn_recv_ready(iop_conn *c, void *buf, size_t len)
{
    for (;;) {
        ssize_t n = recv(c->fd, buf, len, MSG_DONTWAIT);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int rc = c->ops->wait(c, IOP_READ);
        if (rc < 0)
            return rc;
    }
}

ssize_t iop__conn_send_ready(iop_conn *c, const void *buf, size_t len)
{
    for (;;) {
        ssize_t n = send(c->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int rc = c->ops->wait(c, IOP_WRITE);
        if (rc < 0)
            return rc;
    }
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

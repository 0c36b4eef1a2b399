/* conn_tls.c - blocking-style connections over TLS: the model's raw ops
 * carry ciphertext, the handler's calls see plaintext (see conn_int.h).
 *
 * The handshake runs before verify, with its own timeout (a client that
 * stops mid-handshake holds a thread or a coroutine only that long), and
 * its failures are logged at most once a second: garbage instead of a
 * ClientHello is a port scanner's daily bread.
 *
 * Files cannot go by sendfile(2) through a user-space TLS: they are read
 * with pread into one bounded buffer and encrypted from there, so a file
 * truncated during the download ends it with -EIO, never a fault, and a
 * slow reader costs the buffer plus the transport's bounded output.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/conn_int.h"
#include "server/server_int.h"

#define HANDSHAKE_MS 10000u
#define CIPHER_READ  (16u * 1024 + 64) /* a whole record and its header */
#define FILE_CHUNK   (16u * 1024)

/* Send every byte of ciphertext the transport holds. */
static int flush(iop_conn *c)
{
    size_t len;
    const void *p;
    while ((p = iop_tls_out(c->tls, &len)) != NULL) {
        ssize_t n = c->ops->send(c, p, len);
        if (n < 0)
            return (int)n;
        iop_tls_out_done(c->tls, (size_t)n);
    }
    return 0;
}

/* One recv of ciphertext into the transport: 0 (EOF included), -errno. */
static int pull(iop_conn *c)
{
    size_t cap;
    void *p = iop_tls_feed_space(c->tls, CIPHER_READ, &cap);
    if (!p)
        return -ENOMEM;
    ssize_t n = c->ops->recv(c, p, cap);
    iop_tls_feed_commit(c->tls, n > 0 ? (size_t)n : 0);
    if (n == 0)
        iop_tls_feed_eof(c->tls);
    return n < 0 ? (int)n : 0;
}

void iop__server_tls_log(iop_server *srv, int fd, const char *why, int rc)
{
    _Atomic long *last = srv->tls_log_last;
    long now = (long)time(NULL), prev = last ? atomic_load(last) : now;
    if (rc == -ECANCELED || prev == now || !atomic_compare_exchange_strong(last, &prev, now))
        return;
    iop_addr peer;
    memset(&peer, 0, sizeof peer);
    socklen_t len = sizeof peer.u;
    char who[IOP_ADDR_STRLEN] = "?";
    if (getpeername(fd, &peer.u.sa, &len) == 0) {
        peer.len = len;
        peer.kind = peer.u.sa.sa_family == AF_UNIX ? IOP_ADDR_UNIX : IOP_ADDR_TCP;
        iop_addr_format(&peer, who, sizeof who);
    }
    if (rc == -ETIMEDOUT)
        why = "timed out";
    iop__server_log(srv, "tls: handshake with %s failed: %s (at most one such line a second)", who,
                    why ? why : iop_strerror(rc));
}

static void log_failure(iop_conn *c, int rc)
{
    iop__server_tls_log(c->srv, c->fd, iop_tls_why(c->tls), rc);
}

int iop__conn_tls_start(iop_conn *c, iop_tls_ctx *ctx)
{
    int rc = iop_tls_new(ctx, NULL, &c->tls);
    if (rc < 0)
        return rc;
    unsigned saved = c->timeout_ms;
    unsigned idle = iop__conn_wait_ms(c);
    c->timeout_ms = idle && idle < HANDSHAKE_MS ? idle : HANDSHAKE_MS;
    for (;;) {
        rc = iop_tls_handshake(c->tls);
        int f = flush(c); /* the next flight, or our alert */
        if (rc == 1 && f == 0)
            break;
        if (rc >= 0 && f < 0)
            rc = f;
        if (rc < 0 || (rc = pull(c)) < 0)
            break;
    }
    c->timeout_ms = saved;
    if (rc == 1)
        return 0;
    log_failure(c, rc);
    iop_tls_free(c->tls);
    c->tls = NULL;
    return rc;
}

void iop__conn_tls_end(iop_conn *c)
{
    if (!c->tls)
        return;
    if (!c->cancelled && iop_tls_shutdown(c->tls) == 0)
        (void)flush(c); /* a goodbye that cannot go is no loss */
    iop_tls_free(c->tls);
    c->tls = NULL;
}

ssize_t iop__conn_tls_recv(iop_conn *c, void *buf, size_t len)
{
    for (;;) {
        ssize_t n = iop_tls_read(c->tls, buf, len);
        if (n != -EAGAIN)
            return n;
        int rc = flush(c); /* e.g. a key update's answer */
        if (rc < 0 || (rc = pull(c)) < 0)
            return rc;
    }
}

ssize_t iop__conn_tls_send(iop_conn *c, const void *buf, size_t len)
{
    for (;;) {
        ssize_t n = iop_tls_write(c->tls, buf, len);
        if (n == -EAGAIN && iop_tls_out_pending(c->tls) == 0)
            return -EPROTO; /* nothing to make room with */
        int rc = flush(c);
        if (rc < 0)
            return rc;
        if (n != -EAGAIN)
            return n;
    }
}

int iop__conn_tls_sendfile(iop_conn *c, int fd, off_t off, size_t len)
{
    char *chunk = malloc(len < FILE_CHUNK ? len : FILE_CHUNK);
    if (!chunk && len)
        return -ENOMEM;
    int rc = 0;
    while (len > 0 && rc == 0) {
        ssize_t n = pread(fd, chunk, len < FILE_CHUNK ? len : FILE_CHUNK, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? -errno : -EIO; /* 0: the file is shorter than promised */
            break;
        }
        for (ssize_t sent = 0; sent < n && rc == 0;) {
            ssize_t w = iop__conn_tls_send(c, chunk + sent, (size_t)(n - sent));
            if (w < 0)
                rc = (int)w;
            else
                sent += w;
        }
        off += n;
        len -= (size_t)n;
    }
    free(chunk);
    return rc;
}

int iop__conn_tls_shutdown(iop_conn *c)
{
    int rc = iop_tls_shutdown(c->tls);
    if (rc == 0)
        rc = flush(c);
    if (rc == 0 && shutdown(c->fd, SHUT_WR) < 0)
        rc = -errno;
    return rc;
}

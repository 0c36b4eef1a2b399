/* dgram.c - datagram handles: opening, the send queue, deferred work and
 * closing; the IO itself is dgram_ready.c's or dgram_complete.c's.
 *
 * Oversized datagrams: both engines receive with MSG_TRUNC, so the kernel
 * reports a datagram's real length even when it did not fit.  One longer
 * than max_size is dropped and counted (iop_dgram_dropped()), never handed
 * to on_recv cut short: a handler cannot tell a truncated datagram from a
 * whole one, and UDP protocols are built to survive a lost datagram, not a
 * mangled one.
 *
 * Sending: iop_dgram_send() copies the datagram into the queue and asks
 * for the handle's defer, so every datagram queued during one iteration
 * leaves in the same sendmmsg (readiness) or the same submission of
 * sendmsg requests (completion) before the loop waits.
 *
 * Closing: the engine stops its IO and, once the kernel holds none of our
 * memory, closes the fd and marks the handle done; the defer then frees it
 * and runs on_close.  Receive memory is freed there too, never earlier,
 * so a close from inside on_recv cannot pull the buffer out from under the
 * engine that lent it. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "stream/dgram_int.h"

#define DEFAULT_MAX_SIZE  65536u
#define DEFAULT_BATCH     16u
#define MAX_BATCH         1024u /* UIO_MAXIOV: recvmmsg takes no more at once */
#define DEFAULT_QUEUE_MAX ((size_t)4 << 20)

static void pending_run(iop_defer *df);

/* ---- opening ----------------------------------------------------------- */

static int check_socket(int fd)
{
    int type = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        return -errno;
    if (type != SOCK_DGRAM)
        return -EINVAL;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0))
        return -errno;
    return 0;
}

static void apply_defaults(struct iop_dgram_config *cfg)
{
    if (!cfg->max_size)
        cfg->max_size = DEFAULT_MAX_SIZE;
    if (!cfg->batch)
        cfg->batch = DEFAULT_BATCH;
    if (cfg->batch > MAX_BATCH)
        cfg->batch = MAX_BATCH;
    if (!cfg->send_queue_max)
        cfg->send_queue_max = DEFAULT_QUEUE_MAX;
}

int iop_dgram_open(iop_loop *loop, int fd, const struct iop_dgram_config *cfg, iop_dgram **out)
{
    if (fd < 0)
        return -EBADF;
    int rc = (!loop || !cfg || !cfg->on_recv || !out) ? -EINVAL : check_socket(fd);
    iop_dgram *d = NULL;
    if (rc == 0 && !(d = calloc(1, sizeof *d)))
        rc = -ENOMEM;
    if (rc == 0) {
        d->loop = loop;
        d->fd = fd;
        d->cfg = *cfg;
        apply_defaults(&d->cfg);
        d->eng =
            (iop_loop_caps(loop) & IOP_CAP_COMPLETION) ? &iop__dgram_complete : &iop__dgram_ready;
        d->defer.data = d;
        rc = d->eng->open(d);
    }
    if (rc < 0) {
        close(fd);
        free(d);
        return rc;
    }
    *out = d;
    return 0;
}

void iop_dgram_set_data(iop_dgram *d, void *data)
{
    d->data = data;
}

void *iop_dgram_data(const iop_dgram *d)
{
    return d->data;
}

int iop_dgram_fd(const iop_dgram *d)
{
    return d->fd;
}

uint64_t iop_dgram_dropped(const iop_dgram *d)
{
    return d->dropped;
}

/* ---- receiving --------------------------------------------------------- */

int iop_dgram_recv_start(iop_dgram *d)
{
    if (d->flags & DF_CLOSING)
        return -EPIPE;
    if (d->flags & DF_FAILED)
        return d->err;
    if (d->flags & DF_READING)
        return 0;
    d->flags |= DF_READING;
    int rc = d->eng->recv_start(d);
    if (rc < 0)
        (void)iop_dgram_recv_stop(d);
    return rc;
}

int iop_dgram_recv_stop(iop_dgram *d)
{
    if (!(d->flags & DF_READING))
        return 0;
    d->flags &= ~DF_READING;
    d->eng->recv_stop(d);
    return 0;
}

void iop__dgram_deliver(iop_dgram *d, size_t n, const char *buf,
                        const struct sockaddr_storage *from, socklen_t fromlen)
{
    if (n > d->cfg.max_size) {
        d->dropped++; /* MSG_TRUNC: it did not fit (see the top of this file) */
        return;
    }
    d->cfg.on_recv(d, (ssize_t)n, buf, (const struct sockaddr *)from, (unsigned)fromlen);
}

/* The socket itself failed: reading stops and on_recv hears it once. */
void iop__dgram_fail(iop_dgram *d, int err)
{
    if (d->flags & (DF_FAILED | DF_CLOSING))
        return;
    d->flags |= DF_FAILED;
    d->err = err;
    (void)iop_dgram_recv_stop(d);
    d->cfg.on_recv(d, err, NULL, NULL, 0);
}

/* Errors that concern one datagram or one peer, not the socket: an ICMP
 * error left by an earlier send (connected sockets, IP_RECVERR), a route
 * that came and went, a moment without kernel memory.  Reading goes on. */
int iop__dgram_transient(int err)
{
    switch (-err) {
    case ECONNREFUSED:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case EHOSTDOWN:
    case ENETDOWN:
    case EPROTO:
    case ENOBUFS:
    case ENOMEM:
    case EINTR:
        return 1;
    default:
        return 0;
    }
}

/* ---- sending ----------------------------------------------------------- */

int iop_dgram_send(iop_dgram *d, const void *buf, size_t len, const struct sockaddr *to,
                   unsigned tolen)
{
    if (d->flags & DF_CLOSING)
        return -EPIPE;
    if (len > IOP_DGRAM_MAX)
        return -EMSGSIZE;
    if ((len && !buf) || (!to && tolen) || tolen > sizeof(struct sockaddr_storage))
        return -EINVAL;
    if (d->queued + len > d->cfg.send_queue_max)
        return -ENOBUFS;
    struct dsend *s = malloc(sizeof *s + len);
    if (!s)
        return -ENOMEM;
    memset(s, 0, sizeof *s);
    s->d = d;
    s->len = len;
    if (len)
        memcpy(s->data, buf, len);
    if (to && tolen)
        memcpy(&s->to, to, tolen);
    s->iov = (struct iovec){s->data, len};
    s->msg.msg_name = to ? &s->to : NULL;
    s->msg.msg_namelen = to ? tolen : 0;
    s->msg.msg_iov = &s->iov;
    s->msg.msg_iovlen = 1;
    if (d->stail)
        d->stail->next = s;
    else
        d->shead = s;
    d->stail = s;
    d->queued += len;
    /* Readiness, blocked: IOP_WRITE will flush, an earlier try is wasted. */
    if (!(d->flags & DF_WBLOCKED))
        iop__dgram_pend(d);
    return 0;
}

struct dsend *iop__dgram_pop(iop_dgram *d)
{
    struct dsend *s = d->shead;
    if (s) {
        d->shead = s->next;
        if (!d->shead)
            d->stail = NULL;
        s->next = NULL;
    }
    return s;
}

/* The kernel took s (or refused it, or it was dropped): forget it. */
void iop__dgram_sent(iop_dgram *d, struct dsend *s)
{
    d->queued -= s->len;
    free(s);
}

/* ---- deferred work and closing ----------------------------------------- */

void iop__dgram_pend(iop_dgram *d)
{
    (void)iop_defer_start(d->loop, &d->defer, pending_run);
}

static void dgram_free(iop_dgram *d)
{
    free(d->rb);
    free(d->slots);
    free(d->bufs);
    if (d->cfg.on_close)
        d->cfg.on_close(d);
    free(d);
}

static void pending_run(iop_defer *df)
{
    iop_dgram *d = df->data;
    if (d->flags & DF_DONE)
        dgram_free(d);
    else if (d->flags & DF_CLOSING)
        return; /* the engine is waiting for the kernel */
    else
        d->eng->pending(d);
}

void iop_dgram_close(iop_dgram *d)
{
    if (d->flags & DF_CLOSING)
        return;
    d->flags |= DF_CLOSING;
    d->flags &= ~(DF_READING | DF_READ_AGAIN);
    struct dsend *s;
    while ((s = iop__dgram_pop(d)))
        iop__dgram_sent(d, s);
    d->eng->close(d);
}

/* Nothing of ours is in the kernel any more: close the fd, and owe
 * on_close, which runs from the defer, never inside a call of the user. */
void iop__dgram_done(iop_dgram *d)
{
    close(d->fd);
    d->fd = -1;
    d->flags |= DF_DONE;
    iop__dgram_pend(d);
}

/* dgram_ready.c - the readiness engine for datagrams: recvmmsg when the
 * loop says the socket is readable, sendmmsg before the loop waits.
 *
 * Level: READ interest while receiving, WRITE only after a sendmmsg said
 * EAGAIN.  Edge: READ|WRITE registered once for the handle's life; reads
 * go on until EAGAIN (a few batches per wakeup, then the defer carries on,
 * so one busy socket cannot starve the others), and a receive started
 * again is tried at once because the edge that announced the datagrams is
 * gone.
 *
 * The receive batch (cfg.batch buffers of max_size bytes, their addresses
 * and the mmsghdr array) is allocated by recv_start and freed when
 * receiving stops with nothing of it left to deliver. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "stream/dgram_int.h"

#define RECV_CALLS_PER_WAKEUP 4 /* recvmmsg calls, then yield (fairness) */

static void ready_cb(iop_io *w, unsigned revents);

static int edge(const iop_dgram *d)
{
    return (d->io.events & IOP_EDGE) != 0;
}

static int dready_open(iop_dgram *d)
{
    iop_loop *loop = d->loop;
    iop_io_init(&d->io, d->fd, ready_cb);
    d->io.data = d;
    int want_edge = (iop_loop_flags(loop) & IOP_LOOP_EDGE) && (iop_loop_caps(loop) & IOP_CAP_EDGE);
    return iop_io_start(loop, &d->io, want_edge ? IOP_READ | IOP_WRITE | IOP_EDGE : 0);
}

static int interest(iop_dgram *d)
{
    if (edge(d) || !d->io.active)
        return 0;
    unsigned ev = 0;
    if (iop__dgram_reading(d))
        ev |= IOP_READ;
    if (d->flags & DF_WBLOCKED)
        ev |= IOP_WRITE;
    if (ev == (d->io.events & (IOP_READ | IOP_WRITE)))
        return 0;
    return iop_io_modify(&d->io, ev | IOP_LEVEL);
}

/* ---- receiving --------------------------------------------------------- */

static int batch_get(iop_dgram *d)
{
    if (d->rb)
        return 0;
    size_t n = d->cfg.batch;
    /* One block: the header, then arrays whose element sizes are all
     * multiples of 8, then the buffers. */
    size_t size =
        sizeof(struct rbatch) +
        n * (sizeof(struct sockaddr_storage) + sizeof(struct mmsghdr) + sizeof(struct iovec)) +
        n * d->cfg.max_size;
    struct rbatch *rb = malloc(size);
    if (!rb)
        return -ENOMEM;
    memset(rb, 0, sizeof *rb);
    rb->from = (struct sockaddr_storage *)(rb + 1);
    rb->msgs = (struct mmsghdr *)(rb->from + n);
    rb->iov = (struct iovec *)(rb->msgs + n);
    rb->buf = (char *)(rb->iov + n);
    for (size_t i = 0; i < n; i++) {
        rb->iov[i] = (struct iovec){rb->buf + i * d->cfg.max_size, d->cfg.max_size};
        memset(&rb->msgs[i], 0, sizeof rb->msgs[i]);
        rb->msgs[i].msg_hdr.msg_name = &rb->from[i];
        rb->msgs[i].msg_hdr.msg_iov = &rb->iov[i];
        rb->msgs[i].msg_hdr.msg_iovlen = 1;
    }
    d->rb = rb;
    return 0;
}

/* Free the batch when receiving has stopped and nothing in it is owed. */
static void release(iop_dgram *d)
{
    struct rbatch *rb = d->rb;
    if (!rb || (d->flags & (DF_READING | DF_IN_CB | DF_CLOSING)) || rb->next < rb->count)
        return;
    free(rb);
    d->rb = NULL;
}

/* One recvmmsg: the number of datagrams, or -errno. */
static int recv_batch(iop_dgram *d)
{
    struct rbatch *rb = d->rb;
    for (unsigned i = 0; i < d->cfg.batch; i++) {
        rb->msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
        rb->msgs[i].msg_hdr.msg_flags = 0;
    }
    int n;
    do
        n = recvmmsg(d->fd, rb->msgs, d->cfg.batch, MSG_DONTWAIT | MSG_TRUNC, NULL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    rb->count = (unsigned)n;
    rb->next = 0;
    return n;
}

/* Hand out what the last recvmmsg got, until the user stops receiving. */
static void deliver_batch(iop_dgram *d)
{
    struct rbatch *rb = d->rb;
    while (rb->next < rb->count && iop__dgram_reading(d)) {
        unsigned i = rb->next++;
        iop__dgram_deliver(d, rb->msgs[i].msg_len, rb->buf + (size_t)i * d->cfg.max_size,
                           &rb->from[i], rb->msgs[i].msg_hdr.msg_namelen);
    }
}

static void do_read(iop_dgram *d)
{
    int drained = 0;
    d->flags |= DF_IN_CB;
    deliver_batch(d); /* left over from before a recv_stop */
    for (int i = 0; i < RECV_CALLS_PER_WAKEUP && iop__dgram_reading(d); i++) {
        int n = recv_batch(d);
        if (n == -EAGAIN) {
            drained = 1;
            break;
        }
        if (n < 0) {
            if (!iop__dgram_transient(n))
                iop__dgram_fail(d, n);
            continue;
        }
        deliver_batch(d);
        /* Level: a short batch means the socket is empty; the loop will say
         * when more comes.  Edge: only EAGAIN says so. */
        if (!edge(d) && (unsigned)n < d->cfg.batch) {
            drained = 1;
            break;
        }
    }
    d->flags &= ~DF_IN_CB;
    if (edge(d) && !drained && iop__dgram_reading(d)) {
        d->flags |= DF_READ_AGAIN;
        iop__dgram_pend(d);
    }
    release(d);
}

static int dready_recv_start(iop_dgram *d)
{
    int rc = batch_get(d);
    if (rc < 0 || (rc = interest(d)) < 0)
        return rc;
    if (edge(d) || d->rb->next < d->rb->count) {
        d->flags |= DF_READ_AGAIN;
        iop__dgram_pend(d);
    }
    return 0;
}

static void dready_recv_stop(iop_dgram *d)
{
    d->flags &= ~DF_READ_AGAIN;
    (void)interest(d);
    release(d);
}

/* ---- sending ----------------------------------------------------------- */

static void flush(iop_dgram *d)
{
    int retried = 0;
    while (d->shead) {
        struct mmsghdr m[DGRAM_SEND_BATCH];
        unsigned n = 0;
        for (struct dsend *k = d->shead; k && n < DGRAM_SEND_BATCH; k = k->next)
            m[n++] = (struct mmsghdr){.msg_hdr = k->msg};
        int r = sendmmsg(d->fd, m, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                d->flags |= DF_WBLOCKED;
                break;
            }
            /* The first datagram was refused.  An error left on the socket
             * by an earlier one (ICMP) is reported once: try again.  Twice
             * means this datagram's own (bad address, no route): drop it,
             * as UDP would have dropped it further down the road. */
            if (!retried) {
                retried = 1;
                continue;
            }
            r = 1;
        }
        retried = 0;
        for (int i = 0; i < r; i++)
            iop__dgram_sent(d, iop__dgram_pop(d));
    }
    (void)interest(d);
}

static void ready_cb(iop_io *w, unsigned revents)
{
    iop_dgram *d = w->data;
    if ((revents & IOP_WRITE) && (d->flags & DF_WBLOCKED)) {
        d->flags &= ~DF_WBLOCKED;
        flush(d);
    }
    if ((revents & IOP_READ) && iop__dgram_reading(d))
        do_read(d);
}

/* Before the loop waits: read on (edge), then send what on_recv queued. */
static void dready_pending(iop_dgram *d)
{
    if (d->flags & DF_READ_AGAIN) {
        d->flags &= ~DF_READ_AGAIN;
        if (iop__dgram_reading(d))
            do_read(d);
    }
    if ((d->flags & DF_CLOSING) || !d->shead || (d->flags & DF_WBLOCKED))
        return;
    flush(d);
}

static void dready_close(iop_dgram *d)
{
    iop_io_stop(&d->io);
    iop__dgram_done(d);
}

const struct iop__dgram_engine iop__dgram_ready = {
    .name = "ready",
    .open = dready_open,
    .recv_start = dready_recv_start,
    .recv_stop = dready_recv_stop,
    .pending = dready_pending,
    .close = dready_close,
};

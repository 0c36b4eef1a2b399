/* dgram_complete.c - the completion engine for datagrams (io_uring): the
 * kernel receives and sends, we are told the result.
 *
 *   receive  cfg.batch recvmsg requests in flight, each with its own
 *            buffer, msghdr and address (a slot); a slot is armed again
 *            as soon as on_recv has had its datagram.  recv_stop cancels
 *            them, so a stopped handle leaves datagrams in the kernel's
 *            queue; one that completed anyway is held, with its slot, and
 *            delivered first when receiving starts again.
 *   send     each queued datagram becomes one sendmsg request that owns
 *            it until its completion; at most SEND_INFLIGHT of them at a
 *            time, the rest wait in the queue.  Requests of one iteration
 *            reach the kernel in one system call.
 *   close    cancel everything in flight and wait for every completion
 *            (the kernel may still be writing into a slot), then close.
 *
 * Slots and buffers are allocated by recv_start and freed once receiving
 * has stopped and no slot is in flight or held. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "stream/dgram_int.h"

#define SEND_INFLIGHT 128

static void recv_cb(iop_op *op, int res, unsigned flags);
static void send_cb(iop_op *op, int res, unsigned flags);

static void maybe_done(iop_dgram *d)
{
    if (d->recv_inflight || d->send_inflight || (d->flags & DF_DONE))
        return;
    iop__dgram_done(d);
}

/* ---- receiving --------------------------------------------------------- */

static int slots_get(iop_dgram *d)
{
    if (d->slots)
        return 0;
    size_t n = d->cfg.batch;
    d->slots = calloc(n, sizeof *d->slots);
    d->bufs = malloc(n * d->cfg.max_size);
    if (!d->slots || !d->bufs) {
        free(d->slots);
        free(d->bufs);
        d->slots = NULL;
        d->bufs = NULL;
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        struct dslot *s = &d->slots[i];
        s->d = d;
        s->iov = (struct iovec){d->bufs + i * d->cfg.max_size, d->cfg.max_size};
        s->msg.msg_name = &s->from;
        s->msg.msg_iov = &s->iov;
        s->msg.msg_iovlen = 1;
    }
    return 0;
}

static void release(iop_dgram *d)
{
    if (!d->slots || (d->flags & (DF_READING | DF_IN_CB | DF_CLOSING)) || d->recv_inflight ||
        d->held_head)
        return;
    free(d->slots);
    free(d->bufs);
    d->slots = NULL;
    d->bufs = NULL;
}

static int arm(struct dslot *s)
{
    iop_dgram *d = s->d;
    s->msg.msg_namelen = sizeof s->from;
    s->msg.msg_flags = 0;
    /* MSG_TRUNC: res is the datagram's real length, so one that did not
     * fit is recognised (and dropped) rather than delivered cut short. */
    int rc = iop_op_recvmsg(d->loop, &s->op, d->fd, &s->msg, MSG_TRUNC, recv_cb);
    if (rc < 0)
        return rc;
    s->state = SLOT_ARMED;
    d->recv_inflight++;
    return 0;
}

/* Arm every idle slot.  A failure matters only when it leaves nothing in
 * flight (nothing would ever complete to try again). */
static int arm_idle(iop_dgram *d)
{
    int rc = 0;
    for (unsigned i = 0; i < d->cfg.batch && iop__dgram_reading(d); i++) {
        if (d->slots[i].state == SLOT_IDLE && (rc = arm(&d->slots[i])) < 0)
            break;
    }
    return d->recv_inflight ? 0 : rc;
}

static void deliver(iop_dgram *d, struct dslot *s, int res)
{
    d->flags |= DF_IN_CB;
    iop__dgram_deliver(d, (size_t)res, s->iov.iov_base, &s->from, s->msg.msg_namelen);
    d->flags &= ~DF_IN_CB;
}

static void hold(iop_dgram *d, struct dslot *s, int res)
{
    s->state = SLOT_HELD;
    s->res = res;
    s->next = NULL;
    if (d->held_tail)
        d->held_tail->next = s;
    else
        d->held_head = s;
    d->held_tail = s;
}

static void deliver_held(iop_dgram *d)
{
    struct dslot *s;
    while (iop__dgram_reading(d) && (s = d->held_head)) {
        d->held_head = s->next;
        if (!d->held_head)
            d->held_tail = NULL;
        s->next = NULL;
        s->state = SLOT_IDLE;
        deliver(d, s, s->res);
    }
}

static void recv_cb(iop_op *op, int res, unsigned flags)
{
    struct dslot *s = (struct dslot *)op;
    iop_dgram *d = s->d;
    (void)flags;
    s->state = SLOT_IDLE;
    d->recv_inflight--;
    if (d->flags & DF_CLOSING) {
        maybe_done(d);
        return;
    }
    if (res >= 0) {
        /* Held ones first, in the order they came. */
        if (iop__dgram_reading(d) && !d->held_head)
            deliver(d, s, res);
        else
            hold(d, s, res);
    } else if (res != -ECANCELED && res != -EAGAIN && !iop__dgram_transient(res)) {
        /* -EAGAIN: every slot waits on the same socket, one datagram wakes
         * them all, and io_uring hands a nonblocking socket's EAGAIN to
         * the losers instead of waiting again.  Arm again, as below. */
        iop__dgram_fail(d, res);
    }
    if (iop__dgram_reading(d) && s->state == SLOT_IDLE) {
        int rc = arm(s);
        if (rc < 0 && !d->recv_inflight)
            iop__dgram_fail(d, rc);
    }
    release(d);
}

static int dcomp_recv_start(iop_dgram *d)
{
    int rc = slots_get(d);
    if (rc < 0)
        return rc;
    if (d->held_head) {
        iop__dgram_pend(d); /* held datagrams first, then arm the rest */
        return 0;
    }
    return arm_idle(d);
}

static void cancel_recvs(iop_dgram *d)
{
    for (unsigned i = 0; d->slots && i < d->cfg.batch; i++)
        if (d->slots[i].state == SLOT_ARMED)
            (void)iop_op_cancel(&d->slots[i].op);
}

static void dcomp_recv_stop(iop_dgram *d)
{
    cancel_recvs(d);
    release(d);
}

/* ---- sending ----------------------------------------------------------- */

static void submit_sends(iop_dgram *d)
{
    struct dsend *s;
    while (d->send_inflight < SEND_INFLIGHT && (s = iop__dgram_pop(d))) {
        if (iop_op_sendmsg(d->loop, &s->op, d->fd, &s->msg, 0, send_cb) < 0) {
            iop__dgram_sent(d, s); /* no room in the ring: dropped */
            continue;
        }
        s->prev = NULL;
        s->next = d->sflight;
        if (d->sflight)
            d->sflight->prev = s;
        d->sflight = s;
        d->send_inflight++;
    }
}

static void send_cb(iop_op *op, int res, unsigned flags)
{
    struct dsend *s = (struct dsend *)op;
    iop_dgram *d = s->d;
    (void)flags;
    /* The socket buffer was full when io_uring retried after a wakeup (it
     * answers -EAGAIN for nonblocking sockets then): the same request
     * again, which waits for room.  Any other failure drops the datagram:
     * UDP promises nothing. */
    if (res == -EAGAIN && !(d->flags & DF_CLOSING) &&
        iop_op_sendmsg(d->loop, &s->op, d->fd, &s->msg, 0, send_cb) == 0)
        return;
    if (s->prev)
        s->prev->next = s->next;
    else
        d->sflight = s->next;
    if (s->next)
        s->next->prev = s->prev;
    d->send_inflight--;
    iop__dgram_sent(d, s);
    if (d->flags & DF_CLOSING)
        maybe_done(d);
    else if (d->shead)
        submit_sends(d);
}

/* ---- deferred work and closing ----------------------------------------- */

static void dcomp_pending(iop_dgram *d)
{
    deliver_held(d);
    if (iop__dgram_reading(d) && d->slots) {
        int rc = arm_idle(d);
        if (rc < 0)
            iop__dgram_fail(d, rc);
    }
    if (d->flags & DF_CLOSING)
        return;
    submit_sends(d);
    release(d);
}

static void dcomp_close(iop_dgram *d)
{
    cancel_recvs(d);
    for (struct dsend *s = d->sflight; s; s = s->next)
        (void)iop_op_cancel(&s->op);
    for (struct dslot *s = d->held_head; s; s = s->next)
        s->state = SLOT_IDLE;
    d->held_head = d->held_tail = NULL;
    maybe_done(d);
}

static int dcomp_open(iop_dgram *d)
{
    (void)d; /* nothing to register: requests go out as receiving starts */
    return 0;
}

const struct iop__dgram_engine iop__dgram_complete = {
    .name = "complete",
    .open = dcomp_open,
    .recv_start = dcomp_recv_start,
    .recv_stop = dcomp_recv_stop,
    .pending = dcomp_pending,
    .close = dcomp_close,
};

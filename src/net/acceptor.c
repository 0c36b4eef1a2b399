/* acceptor.c - accept connections on a loop, on every backend.
 *
 * Two engines behind one state machine:
 *
 *   readiness (select, poll, epoll)  an iop_io watches the listening fd and
 *       its callback calls accept4() up to IOP_ACCEPT_BUDGET times.  On an
 *       edge-triggered loop a budget cut short leaves connections without a
 *       new edge to announce them, so the `kick` defer carries on next
 *       iteration (after other fds have had their turn).
 *   completion (io_uring)  one multishot iop_op_accept stays armed; each
 *       completion is a new fd.  A completion without IOP_OP_MORE ends the
 *       request, and sync_state() arms a new one if we still want to accept.
 *       Pausing or stopping cancels the request; fds that complete before
 *       the cancel lands are kept in `held` (paused) or closed (stopping).
 *
 * `state` bits say what is wanted; sync_state() makes the engine match, and
 * is called after anything that changes them.  Callbacks may pause, resume
 * or stop the acceptor, so every loop re-checks wants() after each one.
 *
 * Out of fds: see net.h.  The spare fd is closed to make room for accept4(),
 * then reopened; the backoff timer pauses accepting meanwhile. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ioplex/net.h"

#define ST_ACTIVE     0x001u /* started, not stopped */
#define ST_PAUSED     0x002u /* iop_acceptor_pause() */
#define ST_BACKOFF    0x004u /* out of fds/memory: the backoff timer runs */
#define ST_FAILED     0x008u /* the listening socket is broken */
#define ST_COMPLETION 0x010u /* io_uring engine */
#define ST_EDGE       0x020u /* readiness engine, edge-triggered watcher */
#define ST_ARMED      0x040u /* completion: the accept request is in flight */
#define ST_CANCELING  0x080u /* completion: a cancel for it was sent */
#define ST_CLOSING    0x100u /* stopped; waiting for the request to end */
#define ST_CLOSE_CB   0x200u /* stopped; close_cb queued on `kick` */
#define ST_REPORTED   0x400u /* reported_at is set */

#define REPORT_INTERVAL_MS 1000

static void sync_state(iop_acceptor *acc);

static int wants(const iop_acceptor *acc)
{
    return (acc->state & (ST_ACTIVE | ST_PAUSED | ST_BACKOFF | ST_FAILED)) == ST_ACTIVE;
}

static int open_spare(void)
{
    return open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* Tell the error callback; resource errors at most once a second. */
static void report(iop_acceptor *acc, int err, int limited)
{
    uint64_t now = iop_loop_now(acc->loop);
    if (limited && (acc->state & ST_REPORTED) && now - acc->reported_at < REPORT_INTERVAL_MS)
        return;
    acc->state |= ST_REPORTED;
    acc->reported_at = now;
    if (acc->error_cb)
        acc->error_cb(acc, err);
}

static void deliver(iop_acceptor *acc, int fd)
{
    acc->accepted++;
    acc->cb(acc, fd);
}

/* Errors that belong to one connection (Linux hands pending network errors
 * of the new socket to accept(2)), or to no one: skip and carry on. */
static int transient(int err)
{
    switch (err) {
    case EAGAIN:
    case EINTR:
    case ECONNABORTED:
    case EPROTO:
    case EPERM: /* a firewall rule */
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case EOPNOTSUPP:
    case ENETUNREACH:
    case ETIMEDOUT:
        return 1;
    default:
        return 0;
    }
}

/* Out of fds: free the spare's slot, take the waiting connections and close
 * them at once so their clients hear EOF rather than wait, then take the
 * slot back.  The listening fd is nonblocking: this never waits. */
static void shed(iop_acceptor *acc)
{
    if (acc->spare < 0)
        return;
    close(acc->spare);
    acc->spare = -1;
    for (int i = 0; i < IOP_ACCEPT_BUDGET; i++) {
        int fd = accept4(acc->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            close(fd);
            acc->shed++;
        } else if (errno != EINTR && errno != ECONNABORTED) {
            break; /* EAGAIN: backlog empty; EMFILE: someone took the slot */
        }
    }
    acc->spare = open_spare();
}

/* err: a positive errno that is not transient. */
static void on_error(iop_acceptor *acc, int err)
{
    int resource = err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
    if (resource) {
        if (err == EMFILE || err == ENFILE)
            shed(acc);
        acc->state |= ST_BACKOFF;
        iop_timer_start(acc->loop, &acc->backoff, IOP_ACCEPT_BACKOFF_MS, 0);
    } else {
        acc->state |= ST_FAILED;
    }
    sync_state(acc); /* stop watching before the callback, which may resume */
    report(acc, -err, resource);
    sync_state(acc);
}

/* ---- readiness engine ------------------------------------------------- */

static void kick_cb(iop_defer *d);

static void accept_some(iop_acceptor *acc)
{
    for (int i = 0; i < IOP_ACCEPT_BUDGET; i++) {
        if (!wants(acc))
            return;
        int fd = accept4(acc->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            deliver(acc, fd);
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        if (!transient(errno)) {
            on_error(acc, errno);
            return;
        }
    }
    /* Budget spent with more perhaps waiting: level watchers will be told
     * again; an edge watcher will not, until a new connection comes. */
    if ((acc->state & ST_EDGE) && wants(acc))
        iop_defer_start(acc->loop, &acc->kick, kick_cb);
}

static void io_cb(iop_io *w, unsigned revents)
{
    (void)revents;
    accept_some(w->data);
}

static void sync_readiness(iop_acceptor *acc)
{
    if (wants(acc) && !acc->io.active) {
        int rc = iop_io_start(acc->loop, &acc->io, IOP_READ);
        if (rc < 0) {
            on_error(acc, -rc);
            return;
        }
        /* Connections may be waiting already: an edge watcher needs a
         * first try of its own. */
        if (acc->state & ST_EDGE)
            iop_defer_start(acc->loop, &acc->kick, kick_cb);
    } else if (!wants(acc) && acc->io.active) {
        iop_io_stop(&acc->io);
        iop_defer_cancel(&acc->kick);
    }
}

/* ---- completion engine ------------------------------------------------ */

static void op_cb(iop_op *op, int res, unsigned flags);

static void close_held(iop_acceptor *acc)
{
    for (unsigned i = 0; i < acc->nheld; i++)
        close(acc->held[i]);
    free(acc->held);
    acc->held = NULL;
    acc->nheld = acc->capheld = 0;
}

static void hold(iop_acceptor *acc, int fd)
{
    if (acc->nheld == acc->capheld) {
        unsigned cap = acc->capheld ? acc->capheld * 2 : 8;
        int *p = realloc(acc->held, cap * sizeof *p);
        if (!p) {
            close(fd);
            acc->shed++;
            return;
        }
        acc->held = p;
        acc->capheld = cap;
    }
    acc->held[acc->nheld++] = fd;
}

/* Hand over what was held while paused, oldest first. */
static void deliver_held(iop_acceptor *acc)
{
    while (acc->nheld && wants(acc)) {
        int fd = acc->held[0];
        acc->nheld--;
        memmove(acc->held, acc->held + 1, acc->nheld * sizeof *acc->held);
        deliver(acc, fd);
    }
}

static void sync_completion(iop_acceptor *acc)
{
    if (wants(acc) && !(acc->state & ST_ARMED)) {
        if (acc->nheld) { /* hand them over first, from the loop */
            iop_defer_start(acc->loop, &acc->kick, kick_cb);
            return;
        }
        int rc = iop_op_accept(acc->loop, &acc->op, acc->fd, 1, op_cb);
        if (rc < 0) {
            on_error(acc, rc == -EBUSY ? ENOBUFS : -rc); /* SQ full: retry later */
            return;
        }
        acc->state |= ST_ARMED;
    } else if (!wants(acc) && (acc->state & (ST_ARMED | ST_CANCELING)) == ST_ARMED) {
        if (iop_op_cancel(&acc->op) == 0)
            acc->state |= ST_CANCELING;
        else /* no SQE free now: try again next iteration */
            iop_defer_start(acc->loop, &acc->kick, kick_cb);
    }
}

static void finish_close(iop_acceptor *acc)
{
    iop_acceptor_close_cb cb = acc->close_cb;
    iop_defer_cancel(&acc->kick); /* a cancel retry may be queued */
    acc->state = 0;
    acc->close_cb = NULL;
    if (cb)
        cb(acc); /* last: it may free acc */
}

static void op_cb(iop_op *op, int res, unsigned flags)
{
    iop_acceptor *acc = op->data;
    if (!(flags & IOP_OP_MORE))
        acc->state &= ~(ST_ARMED | ST_CANCELING);
    if (res >= 0) {
        if (wants(acc))
            deliver(acc, res);
        else if (acc->state & ST_ACTIVE)
            hold(acc, res); /* paused, backing off or failed */
        else
            close(res); /* stopping */
    } else if (res != -ECANCELED && !transient(-res) && (acc->state & ST_ACTIVE)) {
        on_error(acc, -res);
    }
    if (flags & IOP_OP_MORE)
        return;
    if (acc->state & ST_CLOSING)
        finish_close(acc);
    else
        sync_state(acc);
}

/* ---- both ------------------------------------------------------------- */

static void sync_state(iop_acceptor *acc)
{
    if (acc->state & ST_COMPLETION)
        sync_completion(acc);
    else
        sync_readiness(acc);
}

static void kick_cb(iop_defer *d)
{
    iop_acceptor *acc = d->data;
    if (acc->state & ST_COMPLETION) {
        deliver_held(acc);
        sync_state(acc);
    } else {
        accept_some(acc);
    }
}

static void close_defer_cb(iop_defer *d)
{
    finish_close(d->data);
}

static void backoff_cb(iop_timer *t)
{
    iop_acceptor *acc = t->data;
    acc->state &= ~ST_BACKOFF;
    if (acc->spare < 0)
        acc->spare = open_spare();
    sync_state(acc);
}

static int check_listening(int fd)
{
    int on = 0;
    socklen_t len = sizeof on;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) < 0)
        return -errno;
    if (!on)
        return -EINVAL;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -errno;
    if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

int iop_acceptor_start(iop_loop *loop, iop_acceptor *acc, int fd, iop_accept_cb cb,
                       iop_acceptor_error_cb error_cb)
{
    if (!loop || !acc || !cb || fd < 0)
        return -EINVAL;
    if (acc->state & (ST_ACTIVE | ST_CLOSING | ST_CLOSE_CB))
        return -EBUSY;
    int rc = check_listening(fd);
    if (rc < 0)
        return rc;

    void *data = acc->data;
    memset(acc, 0, sizeof *acc);
    acc->data = data;
    acc->fd = fd;
    acc->loop = loop;
    acc->cb = cb;
    acc->error_cb = error_cb;
    iop_io_init(&acc->io, fd, io_cb);
    iop_timer_init(&acc->backoff, backoff_cb);
    acc->io.data = acc->backoff.data = acc->kick.data = acc->op.data = acc;
    if (iop_loop_caps(loop) & IOP_CAP_COMPLETION)
        acc->state |= ST_COMPLETION;
    else if ((iop_loop_caps(loop) & IOP_CAP_EDGE) && (iop_loop_flags(loop) & IOP_LOOP_EDGE))
        acc->state |= ST_EDGE;

    if (acc->state & ST_COMPLETION)
        rc = iop_op_accept(loop, &acc->op, fd, 1, op_cb);
    else
        rc = iop_io_start(loop, &acc->io, IOP_READ);
    if (rc < 0) {
        acc->state = 0;
        return rc;
    }
    acc->state |= ST_ACTIVE | (acc->state & ST_COMPLETION ? ST_ARMED : 0);
    acc->spare = open_spare();
    if (acc->state & ST_EDGE) /* as in sync_readiness() */
        iop_defer_start(loop, &acc->kick, kick_cb);
    return 0;
}

int iop_acceptor_pause(iop_acceptor *acc)
{
    if (!acc || !(acc->state & ST_ACTIVE))
        return -EINVAL;
    acc->state |= ST_PAUSED;
    sync_state(acc);
    return 0;
}

int iop_acceptor_resume(iop_acceptor *acc)
{
    if (!acc || !(acc->state & ST_ACTIVE))
        return -EINVAL;
    acc->state &= ~ST_PAUSED;
    sync_state(acc);
    return 0;
}

void iop_acceptor_stop(iop_acceptor *acc, iop_acceptor_close_cb close_cb)
{
    if (!acc || !(acc->state & ST_ACTIVE))
        return;
    acc->state &= ~ST_ACTIVE;
    acc->close_cb = close_cb;
    iop_io_stop(&acc->io);
    iop_timer_stop(&acc->backoff);
    iop_defer_cancel(&acc->kick);
    close_held(acc);
    if (acc->spare >= 0)
        close(acc->spare);
    acc->spare = -1;
    if (acc->state & ST_ARMED) {
        acc->state |= ST_CLOSING; /* op_cb finishes when the request ends */
        sync_completion(acc);
    } else if (close_cb) {
        acc->state |= ST_CLOSE_CB;
        iop_defer_start(acc->loop, &acc->kick, close_defer_cb);
    } else {
        acc->state = 0;
    }
}

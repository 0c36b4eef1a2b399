/* ready.c - the readiness engine: nonblocking reads and writes when the
 * loop says the fd is ready (select, poll, epoll level or edge).
 *
 * Level: READ interest while reading, WRITE only while the queue is not
 * empty.  Edge: READ|WRITE registered once for the stream's life, never
 * changed; reads go on until EAGAIN, and a read resumed after a stop is
 * tried at once because the edge that announced the bytes is gone. */
#include <errno.h>
#include <stdlib.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include "stream/stream_int.h"

#define READS_PER_WAKEUP 16 /* then yield to other streams (fairness) */
#define IOV_BATCH        64

static void ready_cb(iop_io *w, unsigned revents);

static int edge(const iop_stream *s)
{
    return (s->u.io.events & IOP_EDGE) != 0;
}

int iop__ready_open(iop_stream *s, int fd)
{
    iop_loop *loop = s->ctx->loop;
    /* select cannot watch fd >= FD_SETSIZE.  The loop only refuses it once
     * an interest is set, later, where interest() cannot report it: refuse it
     * here, so the caller learns it (and the fd is closed), instead of a
     * stream that is never read. */
    if (!(iop_loop_caps(loop) & IOP_CAP_ANY_FD) && fd >= FD_SETSIZE)
        return -ERANGE;
    iop_io_init(&s->u.io, fd, ready_cb);
    int want_edge = (iop_loop_flags(loop) & IOP_LOOP_EDGE) && (iop_loop_caps(loop) & IOP_CAP_EDGE);
    return iop_io_start(loop, &s->u.io, want_edge ? IOP_READ | IOP_WRITE | IOP_EDGE : 0);
}

static void interest(iop_stream *s)
{
    if (edge(s))
        return;
    unsigned ev = 0;
    if ((s->flags & SF_READING) && !(s->flags & SF_EOF))
        ev |= IOP_READ;
    if (s->whead)
        ev |= IOP_WRITE;
    if (ev != (s->u.io.events & (IOP_READ | IOP_WRITE)))
        (void)iop_io_modify(&s->u.io, ev | IOP_LEVEL);
}

int iop__ready_read_start(iop_stream *s)
{
    if (edge(s)) {
        s->flags |= SF_READ_AGAIN;
        iop__stream_pend(s);
    } else {
        interest(s);
    }
    return 0;
}

void iop__ready_read_stop(iop_stream *s)
{
    s->flags &= (uint16_t)~SF_READ_AGAIN;
    interest(s);
}

void iop__ready_kick(iop_stream *s)
{
    /* Edge: the writable edge comes by itself after the EAGAIN that left
     * bytes queued.  Level: ask for it. */
    interest(s);
}

static ssize_t send_iov(int fd, const struct iovec *iov, int n, int more)
{
    /* sendmsg, not writev: only it takes MSG_NOSIGNAL.  send for one
     * buffer: the kernel then skips importing an iovec array. */
    struct msghdr m = {.msg_iov = (struct iovec *)(uintptr_t)iov, .msg_iovlen = (size_t)n};
    int fl = MSG_NOSIGNAL | MSG_DONTWAIT | (more ? MSG_MORE : 0);
    ssize_t r;
    do
        r = n == 1 ? send(fd, iov[0].iov_base, iov[0].iov_len, fl) : sendmsg(fd, &m, fl);
    while (r < 0 && errno == EINTR);
    return r;
}

int iop__try_write(iop_stream *s, const struct iovec *iov, int iovcnt, int more, size_t *sent)
{
    *sent = 0;
    if (iovcnt > IOV_BATCH)
        iovcnt = IOV_BATCH;
    ssize_t r = send_iov(iop__sfd(s), iov, iovcnt, more);
    if (r < 0)
        return errno == EAGAIN ? 0 : -errno;
    *sent = (size_t)r;
    if (r > 0)
        iop__stream_touch(s);
    return 0;
}

/* sendfile(2) of *len bytes from *off: 1 when all went, 0 when the socket
 * is full, -EIO when the file is shorter than promised, -errno. */
static int send_file(int sock, int fd, off_t *off, size_t *len)
{
    while (*len) {
        size_t n = *len < (1u << 30) ? *len : (1u << 30);
        ssize_t r = sendfile(sock, fd, off, n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? 0 : -errno;
        }
        if (r == 0)
            return -EIO;
        *len -= (size_t)r;
    }
    return 1;
}

int iop__try_sendfile(iop_stream *s, int fd, off_t *off, size_t *len)
{
    size_t before = *len;
    int rc = send_file(iop__sfd(s), fd, off, len);
    if (*len < before)
        iop__stream_touch(s);
    return rc < 0 ? rc : 0;
}

/* Send the queue: 1 when empty, 0 when the kernel is full, -errno. */
static int flush(iop_stream *s)
{
    while (s->whead) {
        struct wchunk *c = s->whead;
        ssize_t r;
        if (c->is_file) {
            off_t off = c->file_off;
            size_t n = c->file_len < (1u << 30) ? c->file_len : (1u << 30);
            r = sendfile(iop__sfd(s), c->file_fd, &off, n);
            if (r == 0)
                return -EIO; /* the file is shorter than promised */
        } else {
            struct iovec iov[IOV_BATCH];
            int n = 0;
            struct wchunk *k = c;
            for (; k && !k->is_file && n < IOV_BATCH; k = k->next)
                iov[n++] = (struct iovec){(void *)(uintptr_t)iop__wchunk_at(k), k->len - k->off};
            /* Bytes before a file (a response head): MSG_MORE lets them
             * leave in one segment with the file's first bytes. */
            r = send_iov(iop__sfd(s), iov, n, k && k->is_file);
        }
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? 0 : -errno;
        }
        iop__stream_consumed(s, (size_t)r);
    }
    return 1;
}

static void do_write(iop_stream *s)
{
    int rc = flush(s);
    if (rc < 0) {
        iop__stream_fail(s, rc);
        return;
    }
    interest(s);
    iop__stream_drained(s);
}

/* revents: the loop's report, or 0 when none (a deferred read again). */
static void do_read(iop_stream *s, unsigned revents)
{
    iop_stream_ctx *ctx = s->ctx;
    if (!ctx->rbuf && !(ctx->rbuf = malloc(ctx->cfg.read_size))) {
        iop__stream_fail(s, -ENOMEM);
        return;
    }
    for (int i = 0; i < READS_PER_WAKEUP; i++) {
        if ((s->flags & (SF_READING | SF_CLOSING | SF_FAILED | SF_EOF)) != SF_READING)
            return;
        ssize_t n = recv(iop__sfd(s), ctx->rbuf, ctx->cfg.read_size, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                iop__stream_fail(s, -errno);
            return;
        }
        if (n == 0) {
            s->flags |= SF_EOF;
            interest(s); /* level: a readable EOF would wake us forever */
            iop__stream_deliver(s, 0, NULL);
            return;
        }
        iop__stream_touch(s);
        iop__stream_deliver(s, n, ctx->rbuf);
        /* A short read means the socket is empty, and the loop will say
         * when more comes: level always; edge too unless the report held a
         * FIN or an error, which may wait behind the data with no edge to
         * follow (then only EAGAIN or EOF says so).  That spares an edge
         * reader the recv that answers EAGAIN, one per request. */
        if ((size_t)n < ctx->cfg.read_size &&
            (!edge(s) || (revents && !(revents & (IOP_RDHUP | IOP_ERROR)))))
            return;
    }
    if (edge(s) && (s->flags & SF_READING)) {
        s->flags |= SF_READ_AGAIN;
        iop__stream_pend(s);
    }
}

static void ready_cb(iop_io *w, unsigned revents)
{
    iop_stream *s = (iop_stream *)((char *)w - offsetof(iop_stream, u.io));
    if ((revents & IOP_WRITE) && s->whead)
        do_write(s);
    if (s->flags & (SF_CLOSING | SF_FAILED))
        return;
    if ((revents & IOP_READ) && (s->flags & SF_READING))
        do_read(s, revents);
}

void iop__ready_pending(iop_stream *s)
{
    if (s->whead)
        do_write(s);
    if (s->flags & (SF_CLOSING | SF_FAILED))
        return;
    if (s->flags & SF_READ_AGAIN) {
        s->flags &= (uint16_t)~SF_READ_AGAIN;
        do_read(s, 0);
    }
}

void iop__ready_close(iop_stream *s)
{
    iop_io_stop(&s->u.io);
    iop__stream_done(s);
}

/* queue.c - the write queue: what a write call needs, taken before its
 * first byte goes out; chunks, lent bytes and file ranges in order; what
 * the engines report sent, on_drain and the low and high water marks. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "stream/stream_int.h"

#define CHUNK_MIN 16384u

/* ---- the write queue --------------------------------------------------- */

#define SPARE_MAX   64
#define REF_IOV_MAX 8 /* iov entries before the ref of iop_stream_writev_ref */

/* Completion streams queue every reply, so a 16 KiB chunk per message
 * would go through malloc and free; a few spares per context avoid that. */
void iop__chunk_free(iop_stream_ctx *ctx, struct wchunk *c)
{
    if (c->is_file && c->file_close)
        close(c->file_fd);
    if (c->is_ref)
        c->release(c->release_arg);
    if (!c->is_file && !c->is_ref && c->cap == CHUNK_MIN && ctx->nspare < SPARE_MAX) {
        c->next = ctx->spare;
        ctx->spare = c;
        ctx->nspare++;
        return;
    }
    free(c);
}

static struct wchunk *chunk_new(iop_stream_ctx *ctx, size_t cap)
{
    struct wchunk *c = ctx->spare;
    if (cap == CHUNK_MIN && c) {
        ctx->spare = c->next;
        ctx->nspare--;
    } else if (!(c = malloc(sizeof *c + cap))) {
        return NULL;
    }
    memset(c, 0, sizeof *c);
    c->cap = (uint32_t)cap;
    return c;
}

/* ---- what a call needs, taken before its first byte goes out ----------
 * A write call either takes all it is given (sent or queued) or fails
 * having sent none of it: a response head that left before the queue could
 * take its body would promise bytes the connection never delivers.  So the
 * chunks a call may queue are allocated first, and a file that may outlive
 * the call has a descriptor waiting for it (spare_ready, fd_keep). */
struct wres {
    struct wchunk *room; /* chunks for the call's bytes */
    struct wchunk *item; /* the entry of the lent range or the file */
};

static size_t tail_room(const iop_stream *s)
{
    const struct wchunk *t = s->wtail;
    return t && !t->is_file && !t->is_ref ? t->cap - t->len : 0;
}

static void res_free(iop_stream *s, struct wres *r)
{
    while (r->room) {
        struct wchunk *c = r->room;
        r->room = c->next;
        iop__chunk_free(s->ctx, c);
    }
    free(r->item);
    r->item = NULL;
    if (s->ctx->eng->trim)
        s->ctx->eng->trim(s);
}

/* Room for total bytes beyond what the tail chunk has, an entry if item,
 * and what the engine reserves (the completion engine's send state). */
static int res_take(iop_stream *s, size_t total, int item, struct wres *r)
{
    *r = (struct wres){0};
    size_t room = tail_room(s), need = total > room ? total - room : 0;
    struct wchunk **pp = &r->room;
    while (need) {
        size_t cap = need > CHUNK_MIN ? need : CHUNK_MIN;
        if (cap > UINT32_MAX / 2)
            cap = UINT32_MAX / 2;
        if (!(*pp = chunk_new(s->ctx, cap)))
            goto nomem;
        need -= cap < need ? cap : need;
        pp = &(*pp)->next;
    }
    if (item && !(r->item = calloc(1, sizeof *r->item)))
        goto nomem;
    if (s->ctx->eng->reserve && s->ctx->eng->reserve(s) < 0)
        goto nomem;
    return 0;
nomem:
    res_free(s, r);
    return -ENOMEM;
}

/* A descriptor kept for the moment a file must outlive the call: when
 * dup() then meets EMFILE, dup3() puts the file on the spare's number.
 * An eventfd: it needs no file system and holds nothing open. */
static int spare_ready(iop_stream_ctx *ctx)
{
    if (ctx->spare_fd < 0 && (ctx->spare_fd = eventfd(0, EFD_CLOEXEC)) < 0)
        return -errno;
    return 0;
}

/* *fd becomes the stream's own copy of it.  -errno. */
static int fd_keep(iop_stream_ctx *ctx, int *fd)
{
    int d = fcntl(*fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0 && ctx->spare_fd >= 0) {
        if (dup3(*fd, ctx->spare_fd, O_CLOEXEC) < 0)
            return -errno;
        d = ctx->spare_fd;
        ctx->spare_fd = -1;
        (void)spare_ready(ctx); /* the next one, if there is one to be had */
    }
    if (d < 0)
        return -errno;
    *fd = d;
    return 0;
}

/* Copy bytes into the tail's room, then into reserved chunks. */
static void queue_bytes(iop_stream *s, const char *p, size_t len, struct wres *r)
{
    while (len) {
        struct wchunk *t = s->wtail;
        if (!tail_room(s)) {
            t = r->room;
            r->room = t->next;
            t->next = NULL;
            if (s->wtail)
                s->wtail->next = t;
            else
                s->whead = t;
            s->wtail = t;
        }
        size_t room = t->cap - t->len, n = len < room ? len : room;
        memcpy(t->data + t->len, p, n);
        t->len += (uint32_t)n;
        s->queued += n;
        p += n;
        len -= n;
    }
}

static int write_state(iop_stream *s)
{
    if (s->flags & (SF_CLOSING | SF_FAILED | SF_SHUT_WANT | SF_SHUT_DONE))
        return -EPIPE;
    return 0;
}

static int full_check(iop_stream *s)
{
    if (s->tls)
        return iop__stls_full_check(s);
    if (s->queued > s->ctx->cfg.high_water) {
        s->flags |= SF_FULL;
        return 1;
    }
    return 0;
}

/* A failure inside a call is told through on_read from the deferred phase,
 * never inside the call. */
static void fail_later(iop_stream *s, int rc)
{
    s->flags |= SF_FAILED;
    s->err = (int16_t)rc;
    iop__stream_pend(s);
}

void iop__stream_fail_later(iop_stream *s, int rc)
{
    fail_later(s, rc);
}

static void queue_append(iop_stream *s, struct wchunk *c, size_t len)
{
    if (s->wtail)
        s->wtail->next = c;
    else
        s->whead = c;
    s->wtail = c;
    s->queued += len;
}

static size_t iov_total(const struct iovec *iov, int iovcnt)
{
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    return total;
}

/* Queue the unsent part of iov (sent bytes were taken already). */
static void queue_iov(iop_stream *s, const struct iovec *iov, int iovcnt, size_t sent,
                      struct wres *r)
{
    for (int i = 0; i < iovcnt; i++) {
        size_t skip = sent < iov[i].iov_len ? sent : iov[i].iov_len;
        sent -= skip;
        queue_bytes(s, (const char *)iov[i].iov_base + skip, iov[i].iov_len - skip, r);
    }
}

static void queued_kick(iop_stream *s)
{
    if (s->whead)
        s->ctx->eng->kick(s);
}

int iop_stream_writev(iop_stream *s, const struct iovec *iov, int iovcnt)
{
    int rc = write_state(s);
    if (rc < 0)
        return rc;
    if (s->tls)
        return iop__stls_writev(s, iov, iovcnt);
    return iop__stream_writev_raw(s, iov, iovcnt);
}

int iop__stream_writev_raw(iop_stream *s, const struct iovec *iov, int iovcnt)
{
    int rc;
    struct wres r;
    if ((rc = res_take(s, iov_total(iov, iovcnt), 0, &r)) < 0)
        return rc;
    size_t sent = 0;
    /* Write first, wait later: with nothing queued, the kernel usually
     * takes the whole reply now and nothing is copied. */
    if (!s->whead && s->ctx->eng->write_now &&
        (rc = iop__wire_writev(s, iov, iovcnt, 0, &sent)) < 0) {
        res_free(s, &r);
        fail_later(s, rc);
        return 0;
    }
    queue_iov(s, iov, iovcnt, sent, &r);
    res_free(s, &r);
    queued_kick(s);
    return full_check(s);
}

int iop_stream_write(iop_stream *s, const void *buf, size_t len)
{
    struct iovec iov = {(void *)(uintptr_t)buf, len};
    return iop_stream_writev(s, &iov, 1);
}

int iop_stream_writev_ref(iop_stream *s, const struct iovec *iov, int iovcnt, const void *ref,
                          size_t ref_len, iop_stream_release_cb release, void *arg)
{
    int rc = write_state(s);
    if (rc < 0 || iovcnt < 0 || iovcnt >= REF_IOV_MAX || ref_len > UINT32_MAX) {
        release(arg);
        return rc < 0 ? rc : -EINVAL;
    }
    if (s->tls) { /* encryption copies the bytes anyway */
        struct iovec all[REF_IOV_MAX];
        for (int i = 0; i < iovcnt; i++)
            all[i] = iov[i];
        all[iovcnt] = (struct iovec){(void *)(uintptr_t)ref, ref_len};
        rc = iop__stls_writev(s, all, iovcnt + 1);
        release(arg);
        return rc;
    }
    struct iovec all[REF_IOV_MAX];
    size_t total = iov_total(iov, iovcnt), sent = 0;
    for (int i = 0; i < iovcnt; i++)
        all[i] = iov[i];
    all[iovcnt] = (struct iovec){(void *)(uintptr_t)ref, ref_len};
    struct wres r;
    if ((rc = res_take(s, total, ref_len > 0, &r)) < 0) {
        release(arg);
        return rc;
    }
    if (!s->whead && s->ctx->eng->write_now &&
        (rc = iop__wire_writev(s, all, iovcnt + 1, 0, &sent)) < 0) {
        res_free(s, &r);
        release(arg);
        fail_later(s, rc);
        return 0;
    }
    size_t ref_sent = sent > total ? sent - total : 0;
    queue_iov(s, iov, iovcnt, sent, &r);
    if (ref_sent < ref_len) {
        struct wchunk *c = r.item;
        r.item = NULL;
        c->is_ref = 1;
        c->ref = ref;
        c->len = (uint32_t)ref_len;
        c->off = (uint32_t)ref_sent;
        c->release = release;
        c->release_arg = arg;
        queue_append(s, c, ref_len - ref_sent);
    } else {
        release(arg);
    }
    res_free(s, &r);
    queued_kick(s);
    return full_check(s);
}

static void file_release(int fd, unsigned flags)
{
    if (flags & IOP_SENDFILE_CLOSE)
        close(fd);
}

static void queue_file(iop_stream *s, struct wchunk *c, int fd, off_t off, size_t len,
                       unsigned flags)
{
    c->is_file = 1;
    c->file_close = (flags & IOP_SENDFILE_CLOSE) != 0;
    c->file_fd = fd;
    c->file_off = off;
    c->file_len = len;
    queue_append(s, c, len);
}

/* An empty queue: the head with MSG_MORE, then the file, at once, on either
 * engine (io_uring has no sendfile op; inline, the file needs no dup and
 * nothing is queued).  Returns 0 with *sent / *off / *len advanced, or
 * -errno. */
static int sendfile_now(iop_stream *s, const struct iovec *iov, int iovcnt, size_t total,
                        size_t *sent, int fd, off_t *off, size_t *len)
{
    if (iovcnt) {
        int rc = iop__wire_writev(s, iov, iovcnt, *len > 0, sent);
        if (rc < 0 || *sent < total)
            return rc;
    }
    int rc = *len ? iop__wire_sendfile(s, fd, off, len, s->ctx->short_full) : 0;
    return rc < 0 ? rc : 0;
}

/* IOP_SENDFILE_DUP: a file queued behind other bytes is kept (dup) before
 * anything is queued; one sent at once needs its copy only if the socket
 * fills, so a spare descriptor is made sure of instead (no system call
 * while it lasts). */
static int sendfile_fd_first(iop_stream *s, int *fd, unsigned *flags)
{
    if ((*flags & (IOP_SENDFILE_DUP | IOP_SENDFILE_CLOSE)) != IOP_SENDFILE_DUP)
        return 0;
    if (!s->whead)
        return spare_ready(s->ctx);
    int rc = fd_keep(s->ctx, fd);
    if (rc == 0)
        *flags |= IOP_SENDFILE_CLOSE;
    return rc;
}

int iop_stream_sendfilev(iop_stream *s, const struct iovec *iov, int iovcnt, int file_fd,
                         off_t offset, size_t len, unsigned flags)
{
    int rc = write_state(s);
    if (rc < 0 || file_fd < 0 || offset < 0 || iovcnt < 0) {
        file_release(file_fd, flags);
        return rc < 0 ? rc : -EINVAL;
    }
    if (s->tls)
        return iop__stls_sendfilev(s, iov, iovcnt, file_fd, offset, len, flags);
    size_t total = iov_total(iov, iovcnt), sent = 0;
    struct wres r;
    if ((rc = res_take(s, total, len > 0, &r)) < 0 ||
        (len && (rc = sendfile_fd_first(s, &file_fd, &flags)) < 0)) {
        res_free(s, &r);
        file_release(file_fd, flags);
        return rc;
    }
    if (!s->whead && (total || len)) {
        rc = sendfile_now(s, iov, iovcnt, total, &sent, file_fd, &offset, &len);
        /* The copy for what the socket would not take: the spare makes
         * sure of it, short of dup3 failing. */
        if (rc == 0 && len &&
            (flags & (IOP_SENDFILE_DUP | IOP_SENDFILE_CLOSE)) == IOP_SENDFILE_DUP &&
            (rc = fd_keep(s->ctx, &file_fd)) == 0)
            flags |= IOP_SENDFILE_CLOSE;
        if (rc < 0) {
            res_free(s, &r);
            file_release(file_fd, flags);
            fail_later(s, rc);
            return 0;
        }
    }
    queue_iov(s, iov, iovcnt, sent, &r);
    if (!len) {
        file_release(file_fd, flags);
    } else {
        queue_file(s, r.item, file_fd, offset, len, flags);
        r.item = NULL;
    }
    res_free(s, &r);
    queued_kick(s);
    return full_check(s);
}

int iop_stream_sendfile(iop_stream *s, int file_fd, off_t offset, size_t len, unsigned flags)
{
    return iop_stream_sendfilev(s, NULL, 0, file_fd, offset, len, flags);
}

/* The kernel took n bytes from the head of the queue. */
void iop__stream_consumed(iop_stream *s, size_t n)
{
    s->queued -= n;
    while (n && s->whead) {
        struct wchunk *c = s->whead;
        size_t left = c->is_file ? c->file_len : c->len - c->off;
        size_t take = n < left ? n : left;
        if (c->is_file) {
            c->file_off += (off_t)take;
            c->file_len -= take;
        } else {
            c->off += (uint32_t)take;
        }
        n -= take;
        if (take < left)
            break;
        s->whead = c->next;
        if (!s->whead)
            s->wtail = NULL;
        iop__chunk_free(s->ctx, c);
    }
    if (s->ctx->cfg.idle_timeout_ms)
        iop__stream_touch(s);
}

/* After progress: shutdown when empty and asked, on_drain when owed. */
void iop__stream_drained(iop_stream *s)
{
    if (s->tls) {
        iop__stls_drained(s);
        if (iop__stls_held(s) || (s->flags & (SF_CLOSING | SF_FAILED)))
            return; /* the FIN, the close and on_drain wait for what is held */
    }
    if ((s->flags & SF_END) && !s->whead) {
        iop_stream_close(s);
        return;
    }
    if (!s->whead && (s->flags & SF_SHUT_WANT) && !(s->flags & SF_SHUT_DONE)) {
        s->flags |= SF_SHUT_DONE;
        (void)shutdown(iop__sfd(s), SHUT_WR);
    }
    if ((s->flags & SF_FULL) && s->queued <= s->ctx->cfg.low_water) {
        s->flags &= (uint16_t)~SF_FULL;
        if (s->ctx->cfg.on_drain)
            s->ctx->cfg.on_drain(s);
    }
}

int iop_stream_shutdown(iop_stream *s)
{
    if (s->flags & (SF_CLOSING | SF_FAILED))
        return -EPIPE;
    if (s->flags & (SF_SHUT_WANT | SF_SHUT_DONE))
        return 0;
    s->flags |= SF_SHUT_WANT;
    if (s->tls)
        iop__stls_shutdown(s); /* close_notify, now or after what is held */
    if (!s->whead && !(s->tls && iop__stls_held(s))) {
        s->flags |= SF_SHUT_DONE;
        if (shutdown(iop__sfd(s), SHUT_WR) < 0 && errno != ENOTCONN)
            return -errno;
    }
    return 0;
}

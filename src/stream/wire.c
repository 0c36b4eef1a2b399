/* wire.c - the inline IO both stream engines share: a send now, the
 * gather of queued chunks into an iovec, the one sendfile loop and the
 * queue flush built from them.  Readiness sends everything this way;
 * completion sends files (and the bytes before them) this way, since
 * io_uring has no sendfile op and runs every SPLICE on an io-wq thread.
 *
 * Every byte the stream writes leaves through here (or, under completion,
 * through the send request iop__wire_gather() filled): the place a
 * transport takes plaintext and gives ciphertext (see stream_int.h). */
#include <errno.h>
#include <sys/sendfile.h>
#include <sys/socket.h>

#include "stream/stream_int.h"

#define SENDFILE_CHUNK (1u << 30) /* bytes per sendfile(2): its own limit is ~2 GiB */

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

int iop__wire_writev(iop_stream *s, const struct iovec *iov, int iovcnt, int more, size_t *sent)
{
    *sent = 0;
    if (iovcnt > IOP__IOV_BATCH)
        iovcnt = IOP__IOV_BATCH;
    ssize_t r = send_iov(iop__sfd(s), iov, iovcnt, more);
    if (r < 0)
        return errno == EAGAIN ? 0 : -errno;
    *sent = (size_t)r;
    if (r > 0)
        iop__stream_touch(s);
    return 0;
}

int iop__wire_gather(const iop_stream *s, struct iovec *iov, int max, size_t *total, int *file_next)
{
    int n = 0;
    size_t sum = 0;
    const struct wchunk *k = s->whead;
    for (; k && !k->is_file && n < max; k = k->next) {
        iov[n] = (struct iovec){(void *)(uintptr_t)iop__wchunk_at(k), k->len - k->off};
        sum += iov[n++].iov_len;
    }
    *total = sum;
    *file_next = k && k->is_file;
    return n;
}

int iop__wire_file_ahead(const iop_stream *s)
{
    int n = 0;
    const struct wchunk *k = s->whead;
    for (; k && !k->is_file && n < IOP__IOV_BATCH; k = k->next)
        n++;
    return k && k->is_file;
}

int iop__wire_sendfile(iop_stream *s, int fd, off_t *off, size_t *len, int short_full)
{
    int sock = iop__sfd(s), rc = 1;
    size_t before = *len;
    while (*len) {
        size_t n = *len < SENDFILE_CHUNK ? *len : SENDFILE_CHUNK;
        ssize_t r = sendfile(sock, fd, off, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = errno == EAGAIN ? 0 : -errno;
            break;
        }
        if (r == 0) {
            rc = -EIO; /* the file is shorter than promised */
            break;
        }
        *len -= (size_t)r;
        if ((size_t)r < n && short_full) {
            rc = *len == 0;
            break;
        }
    }
    if (*len < before)
        iop__stream_touch(s);
    return rc;
}

/* The file at the head of the queue. */
static int flush_file(iop_stream *s, int short_full)
{
    struct wchunk *c = s->whead;
    off_t off = c->file_off;
    size_t len = c->file_len;
    int rc = iop__wire_sendfile(s, c->file_fd, &off, &len, short_full);
    iop__stream_consumed(s, c->file_len - len);
    return rc;
}

/* The bytes chunks at the head: MSG_MORE before a file, so that a response
 * head leaves in one segment with the file's first bytes. */
static int flush_bytes(iop_stream *s, int short_full)
{
    struct iovec iov[IOP__IOV_BATCH];
    size_t total, sent;
    int more, n = iop__wire_gather(s, iov, IOP__IOV_BATCH, &total, &more);
    int rc = iop__wire_writev(s, iov, n, more, &sent);
    if (rc < 0)
        return rc;
    iop__stream_consumed(s, sent);
    return sent == total ? 1 : (sent && !short_full ? 1 : 0);
}

int iop__wire_flush(iop_stream *s, int to_file, int short_full)
{
    int rc = 1;
    while (rc > 0 && s->whead && (!to_file || iop__wire_file_ahead(s)))
        rc = s->whead->is_file ? flush_file(s, short_full) : flush_bytes(s, short_full);
    return rc;
}

/* stream_int.h - what the stream core and its two IO engines share.
 *
 * stream.c    contexts, the write queue, idle clock, deferred work, close
 * ready.c     readiness engine (select/poll/epoll): nonblocking read/write
 * complete.c  completion engine (io_uring): multishot recv, sendmsg, and
 *             sendfile(2) inline with a poll request when the socket is full
 */
#ifndef IOP_STREAM_INT_H
#define IOP_STREAM_INT_H

#include "ioplex/stream.h"

/* One queued item: bytes (data[off..len)), the caller's bytes
 * (ref[off..len), iop_stream_writev_ref) or a file range. */
struct wchunk {
    struct wchunk *next;
    uint8_t is_file;
    uint8_t file_close;
    uint8_t is_ref;
    uint32_t len, off, cap; /* bytes */
    int file_fd;            /* file */
    off_t file_off;
    size_t file_len;               /* bytes of the file still to send */
    const char *ref;               /* ref: not ours; release when done */
    iop_stream_release_cb release; /* ref */
    void *release_arg;
    char data[];
};

/* The first byte of a bytes or ref chunk not yet sent. */
static inline const char *iop__wchunk_at(const struct wchunk *c)
{
    return (c->is_ref ? c->ref : c->data) + c->off;
}

#define SF_READING    0x0001u /* the user wants on_read */
#define SF_EOF        0x0002u /* the peer's FIN was seen */
#define SF_SHUT_WANT  0x0004u /* shutdown once the queue drains */
#define SF_SHUT_DONE  0x0008u
#define SF_CLOSING    0x0010u
#define SF_FAILED     0x0020u /* err holds the error; IO has stopped */
#define SF_ERR_TOLD   0x0040u /* on_read has had the error */
#define SF_FULL       0x0080u /* a write said "full": on_drain is owed */
#define SF_PENDING    0x0100u /* on the ctx's pending list */
#define SF_WANT_WRITE 0x0200u /* readiness LT: WRITE interest is on */
#define SF_READ_AGAIN 0x0400u /* readiness: read before the next wait */
#define SF_RECV_ARMED 0x0800u /* completion: a multishot recv is in flight */
#define SF_IN_CB      0x1000u /* inside on_read: close is deferred to after it */
#define SF_DONE       0x2000u /* fd closed, on_close owed */
#define SF_EOF_OWED   0x4000u /* completion: EOF came while reading was stopped */
#define SF_END        0x8000u /* close once the queue has drained */

struct comp_extra; /* complete.c */

struct iop_stream {
    void *data;
    iop_stream_ctx *ctx;
    struct wchunk *whead, *wtail;
    size_t queued;
    iop_stream *idle_prev, *idle_next;
    uint32_t last_active; /* loop ms, truncated */
    uint16_t flags;
    int16_t err;
    struct iop__stls *tls; /* TLS on this stream (stream_tls.c), or NULL */
    /* The tail: a readiness stream is allocated only up to the end of io. */
    union {
        iop_io io; /* readiness; io.fd is the stream's fd */
        struct {   /* completion */
            int fd;
            iop_op recv;
            /* In-flight send, wait for room, stashed bytes: allocated while
             * any of them exists, so an idle stream stays small. */
            struct comp_extra *x;
        } c;
    } u;
};

struct iop_stream_ctx {
    iop_loop *loop;
    struct iop_stream_config cfg;
    int completion; /* the loop has IOP_CAP_COMPLETION */
    size_t count;
    char *rbuf;        /* readiness: the one read buffer */
    iop_bufring *ring; /* completion: the shared provided buffers */
    iop_stream *idle_head, *idle_tail;
    iop_timer idle_timer;
    struct wchunk *spare; /* freed CHUNK_MIN chunks kept for reuse */
    unsigned nspare;
    int spare_fd;         /* kept for a file that must outlive its call */
    iop_stream **pending; /* streams with deferred work */
    size_t npending, cappending;
    iop_defer defer;
    struct iop__stls_ctx *tls; /* stream_tls.c's per-context part, or NULL */
};

static inline int iop__sfd(const iop_stream *s)
{
    return s->ctx->completion ? s->u.c.fd : s->u.io.fd;
}

/* ---- TLS (stream_tls.c) --------------------------------------------------
 * The queue holds ciphertext: writes are encrypted on their way in, with
 * what cannot go yet (before the handshake ends, behind a file) held
 * in order in the stream's TLS state and pumped into the queue as it
 * drains; files are read with pread a bounded piece at a time.  Bytes
 * the engines deliver are decrypted before on_read sees them. */
void iop__stls_input(iop_stream *s, ssize_t n, const char *buf);
int iop__stls_writev(iop_stream *s, const struct iovec *iov, int iovcnt);
int iop__stls_sendfilev(iop_stream *s, const struct iovec *iov, int iovcnt, int fd, off_t off,
                        size_t len, unsigned flags);
void iop__stls_drained(iop_stream *s);   /* pump held bytes as the queue drains */
int iop__stls_full_check(iop_stream *s); /* queued + held past high_water: 1 */
int iop__stls_held(const iop_stream *s); /* bytes (or a close_notify) still to queue */
void iop__stls_shutdown(iop_stream *s);  /* close_notify once nothing is held */
void iop__stls_pending(iop_stream *s);   /* deferred: plaintext owed to a reader */
void iop__stls_closing(iop_stream *s);
void iop__stls_free(iop_stream *s);
void iop__stls_ctx_free(iop_stream_ctx *ctx);

/* stream.c */
/* Deliver plaintext (or the EOF, an error) to on_read. */
void iop__stream_deliver_plain(iop_stream *s, ssize_t n, const char *buf);
/* writev without the state check: 1 "full", 0, or -errno. */
int iop__stream_writev_raw(iop_stream *s, const struct iovec *iov, int iovcnt);
void iop__stream_fail_later(iop_stream *s, int rc);
void iop__stream_pend(iop_stream *s);
void iop__stream_touch(iop_stream *s);
void iop__stream_fail(iop_stream *s, int err);
void iop__stream_deliver(iop_stream *s, ssize_t n, const char *buf);
void iop__stream_consumed(iop_stream *s, size_t n);
void iop__stream_drained(iop_stream *s);
void iop__stream_done(iop_stream *s);
void iop__chunk_free(iop_stream_ctx *ctx, struct wchunk *c);

/* ready.c and complete.c: the same verbs, one engine each. */
int iop__ready_open(iop_stream *s, int fd);
int iop__ready_read_start(iop_stream *s);
void iop__ready_read_stop(iop_stream *s);
void iop__ready_kick(iop_stream *s); /* queue grew or read resumed */
void iop__ready_pending(iop_stream *s);
void iop__ready_close(iop_stream *s);

/* ready.c, for both engines (io_uring has no sendfile op, so a file and the
 * bytes before it go inline there too): at once on the non-blocking socket.
 * write: *sent bytes went; 0 (EAGAIN included) or -errno. */
int iop__try_write(iop_stream *s, const struct iovec *iov, int iovcnt, int more, size_t *sent);
/* sendfile at once: advances *off, lowers *len; 0 (all sent, or the socket
 * is full) or -errno. */
int iop__try_sendfile(iop_stream *s, int fd, off_t *off, size_t *len);

int iop__comp_read_start(iop_stream *s);
void iop__comp_read_stop(iop_stream *s);
void iop__comp_pending(iop_stream *s);
void iop__comp_close(iop_stream *s);
int iop__comp_busy(const iop_stream *s);
/* The send state a queued write needs, allocated before the call sends or
 * queues anything (-ENOMEM), so that no round of the queue allocates; and
 * freed again when nothing was queued. */
int iop__comp_reserve(iop_stream *s);
void iop__comp_trim(iop_stream *s);

#endif

/* stream_int.h - what the stream core, its two IO engines and the wire
 * share.
 *
 * stream.c    contexts, the write queue, idle clock, deferred work, close
 * ready.c     readiness engine (select/poll/epoll): nonblocking read/write
 * complete.c  completion engine (io_uring): multishot recv, send requests,
 *             and the wire inline for files, with a poll request when the
 *             socket is full
 * wire.c      the inline IO both engines share: write now, the chunk to
 *             iovec gather, the one sendfile loop, the queue flush
 *
 * The engine is chosen once per context (struct iop__stream_engine); the
 * core calls it through that table and never asks which one it has.
 */
#ifndef IOP_STREAM_INT_H
#define IOP_STREAM_INT_H

#include <stddef.h>
#include <sys/uio.h>

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
struct iop__stream_engine;

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
            /* In-flight send, wait for room, stashed bytes: allocated while
             * any of them exists, so an idle stream stays small. */
            struct comp_extra *x;
            int fd; /* where io.fd is, so that iop__sfd() needs no engine */
            iop_op recv;
        } c;
    } u;
};

struct iop_stream_ctx {
    iop_loop *loop;
    struct iop_stream_config cfg;
    const struct iop__stream_engine *eng; /* chosen once, by the loop's caps */
    int short_full;                       /* eng->short_full(loop) */
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

_Static_assert(offsetof(iop_stream, u.c.fd) == offsetof(iop_stream, u.io.fd),
               "the stream's fd is at one place under both engines");

static inline int iop__sfd(const iop_stream *s)
{
    return s->u.io.fd;
}

/* ---- the engine seam ----------------------------------------------------
 * One table per way of doing IO, like struct iop_backend for the loop.
 * The core (stream.c) owns the queue, the flags and the user's callbacks;
 * an engine moves bytes between the socket and them.  Each verb is called
 * only in the states its comment names, so an engine never rechecks what
 * the core has checked. */
struct iop__stream_engine {
    const char *name;
    size_t stream_size; /* bytes of an iop_stream under this engine */
    unsigned read_size; /* default cfg.read_size */
    int write_now;      /* writes try the socket at once when nothing is queued */
    /* Whether a short count may be taken for "the socket is full" on this
     * loop (see wire.c below): the context's short_full. */
    int (*short_full)(const iop_loop *loop);
    /* The stream is new and fd nonblocking: 0, or -errno (fd not closed). */
    int (*open)(iop_stream *s, int fd);
    /* SF_READING was just set (SF_EOF may be set too). */
    int (*read_start)(iop_stream *s);
    /* SF_READING was just cleared. */
    void (*read_stop)(iop_stream *s);
    /* The queue grew: have it sent. */
    void (*kick)(iop_stream *s);
    /* NULL or: the state a queued write needs, allocated before the call
     * sends or queues anything (0 or -ENOMEM), so that no round of the
     * queue allocates; trim frees it again when nothing was queued. */
    int (*reserve)(iop_stream *s);
    void (*trim)(iop_stream *s);
    /* Deferred work on an open, unfailed stream (the context's defer). */
    void (*pending)(iop_stream *s);
    /* SF_CLOSING was just set: stop IO, then iop__stream_done() once
     * nothing of the stream's is in the kernel. */
    void (*close)(iop_stream *s);
};

extern const struct iop__stream_engine iop__stream_ready;    /* ready.c */
extern const struct iop__stream_engine iop__stream_complete; /* complete.c */

/* ---- where a transport slots in -----------------------------------------
 * TLS (stream_tls.c, below) sits today at the level of the public calls:
 * it encrypts writes before they reach the queue and decrypts what the
 * engines deliver, so both engines carry it unchanged.  The design it can
 * grow into, at the wire itself:
 *
 * A transport (TLS) turns ciphertext into plaintext both ways, under either
 * engine and under the blocking conn ops alike.  The core's queue and the
 * user's callbacks stay plaintext; everything that touches the socket's
 * bytes is in a few places, and the transport goes exactly there:
 *
 *   inbound   an engine gets bytes off the socket (ready.c: recv into
 *             ctx->rbuf; complete.c: a provided ring buffer, or a stash
 *             while reading was stopped; server/conn.c: a blocking recv) and
 *             hands them to iop__stream_deliver().  A transport takes them
 *             first: input(s, cipher, n) decrypts and calls deliver zero or
 *             more times with plaintext (a record may span reads, a read may
 *             hold several records), and may owe bytes of its own
 *             (handshake, alerts).  Errors fail the stream as recv errors do.
 *   outbound  every write leaves through wire.c (iop__wire_writev,
 *             iop__wire_sendfile, iop__wire_flush) or, under completion,
 *             through the send request built from iop__wire_gather().  A
 *             transport's output(s, plain iov, ...) encrypts into a buffer
 *             of its own that it keeps until the kernel took it (readiness:
 *             the next flush; completion: the send callback), and reports
 *             plaintext consumed, so iop__stream_consumed() keeps counting
 *             the user's bytes (queued, on_drain, low and high water).
 *   files     sendfile(2) cannot encrypt: under a transport the one sendfile
 *             loop (iop__wire_sendfile) preads into the transport's buffer
 *             and goes the outbound way, unless the kernel encrypts (kTLS),
 *             where sendfile stays as it is.
 *   handshake before the first plaintext byte either way: reads run even
 *             while the user has stopped reading, writes queue behind it.
 *   shutdown  iop_stream_shutdown / end send close_notify before the FIN.
 *
 * So a transport is a table per context, chosen once like the engine
 * (input, output, pending for the bytes it owes, shutdown), with its
 * per-stream state behind a pointer that only streams under a transport
 * carry, so a plain stream keeps its size; the engines stay as they are
 * and call it where they now call deliver and the wire. */

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

/* ---- wire.c: inline IO on the nonblocking socket, for both engines -----
 * (io_uring has no sendfile op, so a file and the bytes before it go
 * inline under completion too.)  Results: 1 all went, 0 the socket is
 * full (no error), -errno.  "short": a short count is taken for "full"
 * without a second call to hear EAGAIN, which the kernel's write-space
 * wakeup makes safe for level interest and poll requests; an edge watcher
 * must hear EAGAIN itself, so it passes short_full = 0. */
#define IOP__IOV_BATCH 64 /* iovecs per send */

/* One send/sendmsg of iov (at most IOP__IOV_BATCH), MSG_MORE when more:
 * *sent bytes went; 0 (EAGAIN included) or -errno. */
int iop__wire_writev(iop_stream *s, const struct iovec *iov, int iovcnt, int more, size_t *sent);
/* The bytes chunks from the head of the queue, up to a file or max: the
 * count; *total their bytes, *file_next whether a file follows them. */
int iop__wire_gather(const iop_stream *s, struct iovec *iov, int max, size_t *total,
                     int *file_next);
/* The one sendfile loop: *len bytes of fd from *off, both advanced. */
int iop__wire_sendfile(iop_stream *s, int fd, off_t *off, size_t *len, int short_full);
/* Send the queue until it is empty (1), the socket is full (0) or, with
 * to_file, no file is within the next round (1).  Progress goes through
 * iop__stream_consumed(). */
int iop__wire_flush(iop_stream *s, int to_file, int short_full);
/* Whether a file is within the next IOP__IOV_BATCH chunks. */
int iop__wire_file_ahead(const iop_stream *s);

#endif

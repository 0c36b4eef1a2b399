/* ioplex/stream.h - connections: completion-style reads and writes on any
 * backend.
 *
 * A stream wraps one connected socket (TCP or Unix).  The caller is told
 * what happened, not what might happen: "these bytes arrived", "the peer
 * closed", "your queue has drained".  How the bytes move is the backend's
 * business:
 *   - readiness backends (select, poll, epoll LT/ET) read into one buffer per
 *     context when the fd is readable (edge: until EAGAIN) and try every
 *     write at once, queueing only what the kernel would not take;
 *   - io_uring reads with a multishot recv into a ring of provided buffers
 *     that the kernel fills, and writes with sendmsg requests; every request
 *     of an iteration is one system call.  Files are the exception: io_uring
 *     has no sendfile op, so they go by sendfile(2) inline, and only a full
 *     socket waits, on a poll request.
 *
 * Streams are made from a context (iop_stream_ctx): the callbacks and limits
 * that many connections share (all connections of a listener, typically),
 * plus the per-loop resources (read buffer, buffer ring, idle clock).  Keeping
 * them out of each stream is what makes an idle connection cost ~100 bytes.
 *
 * Memory: the library allocates streams and frees them after on_close.
 * Bytes passed to iop_stream_write() are copied: the caller's buffer is free
 * again when the call returns (iop_stream_writev_ref lends them instead).  A read buffer is lent to
 * on_read until it returns.
 *
 * Threads: a stream and its context belong to their loop's thread.
 * SIGPIPE: writes use MSG_NOSIGNAL; a vanished peer is an error code.  As
 * sendfile(2) cannot be told so, making a context sets SIGPIPE to SIG_IGN
 * if it is at its default (a program's own handler is left alone).
 */
#ifndef IOPLEX_STREAM_H
#define IOPLEX_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "ioplex/loop.h"
#include "ioplex/tls.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct iop_stream iop_stream;
typedef struct iop_stream_ctx iop_stream_ctx;

/* nread > 0: buf holds nread bytes, lent until the callback returns.
 * nread == 0: the peer shut down its side (EOF); writing may go on.
 * nread < 0: the stream failed (-ECONNRESET, -EPIPE, -ETIMEDOUT when idle
 * too long, ...); reading and writing have stopped and the caller should
 * iop_stream_close() it (if it does not, the stream closes itself when the
 * callback returns).  Errors of writes arrive here too. */
typedef void (*iop_stream_read_cb)(iop_stream *s, ssize_t nread, const char *buf);
typedef void (*iop_stream_cb)(iop_stream *s);

struct iop_stream_config {
    iop_stream_read_cb on_read; /* required */
    /* The write queue fell to low_water after a write reported "full". */
    iop_stream_cb on_drain;
    /* The stream is gone: fd closed, every request finished.  Last callback;
     * free what data points to here. */
    iop_stream_cb on_close;
    size_t high_water;        /* 0: 1 MiB */
    size_t low_water;         /* 0: high_water / 4 */
    unsigned idle_timeout_ms; /* no bytes in or out that long: -ETIMEDOUT; 0 = never */
    unsigned read_size;       /* bytes per read buffer; 0: 64 KiB (uring: 16 KiB) */
    unsigned ring_buffers;    /* uring: buffers in the shared ring; 0: 512 */
    void *data;               /* yours: iop_stream_ctx_data() */
};

/* A context for streams on loop.  cfg is copied.  -EINVAL without on_read. */
int iop_stream_ctx_new(iop_loop *loop, const struct iop_stream_config *cfg, iop_stream_ctx **out);
/* Free a context: -EBUSY while it has streams (closed ones count until their
 * on_close has run). */
int iop_stream_ctx_free(iop_stream_ctx *ctx);
iop_loop *iop_stream_ctx_loop(const iop_stream_ctx *ctx);
size_t iop_stream_ctx_count(const iop_stream_ctx *ctx);
void *iop_stream_ctx_data(const iop_stream_ctx *ctx);
/* The context a stream was opened from. */
iop_stream_ctx *iop_stream_ctx_of(const iop_stream *s);
/* Call fn for every open stream of ctx (oldest activity first).  fn may
 * close or end the stream it is given, not others. */
void iop_stream_ctx_foreach(iop_stream_ctx *ctx, void (*fn)(iop_stream *s, void *arg), void *arg);

/* Wrap a connected socket.  The stream owns fd from here on (it closes it,
 * also when this call fails) and makes it non-blocking.  Reading does not
 * start until iop_stream_read_start(). */
int iop_stream_open(iop_stream_ctx *ctx, int fd, iop_stream **out);

/* Speak TLS on s (ioplex/tls.h), right after iop_stream_open: a server
 * context, or a client context with server_name for SNI and the check of
 * the peer's certificate.  on_read, writes, files and on_drain then deal
 * in plaintext on every backend; writes made before the handshake ends
 * wait for it.  A handshake not done within 10 s (or the idle timeout,
 * if shorter) fails the stream with -ETIMEDOUT; a peer that breaks the
 * protocol with -EPROTO (iop_stream_tls_why() says how).  Files are read
 * with pread and encrypted a bounded piece at a time, so a file truncated
 * meanwhile fails the stream with -EIO.  0, -EINVAL (a client context
 * without a name, or bytes already written), -ENOMEM. */
int iop_stream_tls(iop_stream *s, iop_tls_ctx *tls, const char *server_name);
/* fn(arg, s, err) when a TLS handshake fails on a stream of ctx (err:
 * -EPROTO, -ETIMEDOUT, -ECONNRESET...), just before on_read hears of it:
 * for a server's log. */
void iop_stream_ctx_on_tls_fail(iop_stream_ctx *ctx,
                                void (*fn)(void *arg, const iop_stream *s, int err), void *arg);
/* Why TLS failed on s, or NULL; the protocol ALPN chose (NULL: none). */
const char *iop_stream_tls_why(const iop_stream *s);
const char *iop_stream_tls_alpn(const iop_stream *s, size_t *len);

void iop_stream_set_data(iop_stream *s, void *data);
void *iop_stream_data(const iop_stream *s);
/* The socket; in on_close it is already closed, but the number is still
 * returned (for tables kept by fd). */
int iop_stream_fd(const iop_stream *s);
iop_loop *iop_stream_loop(const iop_stream *s);

/* Start/stop calling on_read.  Stopping inside on_read takes effect at once
 * (no further call for bytes already received; they stay queued in the
 * kernel or, on uring, in the stream until reading starts again). */
int iop_stream_read_start(iop_stream *s);
int iop_stream_read_stop(iop_stream *s);

/* Queue bytes (copied) after everything queued before.  Returns 0, or 1
 * when the queue now holds more than high_water bytes ("full": stop
 * producing until on_drain), or -EPIPE after shutdown or close or a failed
 * stream, -ENOMEM.  The queue is sent in order, coalesced into writev /
 * sendmsg calls.  Every write call takes all it is given or, failing, has
 * sent and queued none of it (what it needs is taken before its first byte
 * goes out), and the stream goes on: a response that cannot be had whole
 * can still be answered with another. */
int iop_stream_write(iop_stream *s, const void *buf, size_t len);
int iop_stream_writev(iop_stream *s, const struct iovec *iov, int iovcnt);

/* Queue len bytes of file_fd from offset, in order with the writes, sent by
 * sendfile(2) on every backend: never copied through user space.  With IOP_SENDFILE_CLOSE the
 * stream closes file_fd when it is done with it (sent, failed or stream closed); otherwise the
 * caller must keep it open until then (on_drain / on_close).  Return as iop_stream_write. */
#define IOP_SENDFILE_CLOSE 0x01u
/* With IOP_SENDFILE_DUP the stream keeps a dup(2) of file_fd if it cannot
 * send the range within the call, so the caller may close (or cache and
 * share) its fd as soon as the call returns.  Out of descriptors, the copy
 * goes on a spare the context keeps (one per context, made by the first such
 * call); without one the call fails with -EMFILE / -ENFILE, sending nothing. */
#define IOP_SENDFILE_DUP 0x02u
int iop_stream_sendfile(iop_stream *s, int file_fd, off_t offset, size_t len, unsigned flags);
/* A response in one call: the iov bytes (copied if queued), then the file
 * range.  With nothing queued both go at once, the bytes with MSG_MORE, so a
 * small response leaves in one TCP segment. */
int iop_stream_sendfilev(iop_stream *s, const struct iovec *iov, int iovcnt, int file_fd,
                         off_t offset, size_t len, unsigned flags);

/* A response in one call without copying its body: the iov bytes (copied
 * if queued), then ref_len bytes at ref, which are not copied.  The stream
 * reads them until it calls release(arg), exactly once: when they are sent,
 * or the stream failed or closed, or the call failed (maybe before it
 * returns).  For bytes that stay put anyway, such as a file a cache keeps
 * mapped: a readiness backend with nothing queued sends everything in one
 * writev, io_uring in one sendmsg.  Return as iop_stream_write. */
typedef void (*iop_stream_release_cb)(void *arg);
int iop_stream_writev_ref(iop_stream *s, const struct iovec *iov, int iovcnt, const void *ref,
                          size_t ref_len, iop_stream_release_cb release, void *arg);

/* Bytes queued and not yet accepted by the kernel (files count their
 * remaining length). */
size_t iop_stream_queued(const iop_stream *s);

/* Shut down the write side (FIN) once the queue has drained.  Further
 * writes fail with -EPIPE; reading goes on. */
int iop_stream_shutdown(iop_stream *s);

/* Close: stop reading, drop the queue, close the fd; on_close runs later
 * (never inside this call).  Safe inside any callback of the stream; a
 * second call is a no-op.  For a graceful end, shutdown then close on EOF. */
void iop_stream_close(iop_stream *s);

/* End gracefully: stop reading, send what is queued, then FIN and close
 * (at once if nothing is queued).  on_close follows as for close. */
void iop_stream_end(iop_stream *s);

/* ---- datagrams (UDP) -----------------------------------------------------
 *
 * A datagram handle wraps one bound UDP socket.  Readiness backends read
 * with recvmmsg and send with sendmmsg, a batch per wakeup; io_uring keeps
 * several recvmsg requests in flight and sends each datagram with a
 * sendmsg request.  Datagrams are never merged or split. */

typedef struct iop_dgram iop_dgram;
struct sockaddr;

/* n >= 0: a datagram of n bytes (0 is a valid empty datagram) from `from`;
 * buf and from are lent until the callback returns.  n < 0: the socket
 * failed (reading has stopped; close it). */
typedef void (*iop_dgram_recv_cb)(iop_dgram *d, ssize_t n, const char *buf,
                                  const struct sockaddr *from, unsigned fromlen);
typedef void (*iop_dgram_cb)(iop_dgram *d);

struct iop_dgram_config {
    iop_dgram_recv_cb on_recv; /* required */
    iop_dgram_cb on_close;     /* after iop_dgram_close, when all is gone */
    unsigned max_size;         /* largest datagram received; 0: 65536; larger
                                * ones are dropped and counted, never cut short */
    unsigned batch;            /* datagrams per recvmmsg / requests in flight; 0: 16 */
    size_t send_queue_max;     /* bytes queued for sending; beyond: -ENOBUFS; 0: 4 MiB */
};

/* Wrap a bound UDP socket (the handle owns fd, closes it, also on failure). */
int iop_dgram_open(iop_loop *loop, int fd, const struct iop_dgram_config *cfg, iop_dgram **out);
int iop_dgram_recv_start(iop_dgram *d);
int iop_dgram_recv_stop(iop_dgram *d);
/* Queue one datagram to `to` (copied); sent before the loop next waits,
 * batched with the others of this iteration.  -EMSGSIZE over 65507 bytes,
 * -ENOBUFS when the queue is over send_queue_max, -EPIPE after close.
 * Errors of a send that the kernel refuses later (ECONNREFUSED, ...) are
 * dropped: UDP promises nothing. */
int iop_dgram_send(iop_dgram *d, const void *buf, size_t len, const struct sockaddr *to,
                   unsigned tolen);
void iop_dgram_set_data(iop_dgram *d, void *data);
void *iop_dgram_data(const iop_dgram *d);
int iop_dgram_fd(const iop_dgram *d);
/* Datagrams dropped because they were larger than max_size. */
uint64_t iop_dgram_dropped(const iop_dgram *d);
/* Stop, drop the queue, close the fd; on_close later, never inside. */
void iop_dgram_close(iop_dgram *d);

#ifdef __cplusplus
}
#endif

#endif

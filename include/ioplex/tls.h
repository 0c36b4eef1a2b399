/* ioplex/tls.h - TLS (OpenSSL 3): contexts and a transport that works
 * however the ciphertext moves.
 *
 * A context (iop_tls_ctx) is what many connections share: for a server the
 * certificate and key, the session-ticket keys and the ALPN list; for a
 * client the trust store and whether to verify.  A transport (iop_tls) is
 * one connection's TLS state.  It never touches a socket: ciphertext that
 * arrived (by a readiness read, an io_uring buffer, a blocking recv) is fed
 * in with iop_tls_feed(), plaintext comes out of iop_tls_read(); plaintext
 * goes in with iop_tls_write() and the ciphertext to send is taken from
 * iop_tls_out().  So the same transport runs under every backend and model.
 *
 * Policy, fixed: TLS 1.2 and 1.3 only, OpenSSL's default (secure) cipher
 * lists, no renegotiation, no compression.  Servers accept SNI (one
 * certificate serves every name), resume sessions by stateless tickets
 * whose keys rotate by themselves (below), and pick ALPN from the list
 * given.  Kernel TLS is enabled on the context when the kernel offers the
 * `tls` upper-layer protocol (iop_tls_ktls_available()).
 *
 * Errors: 0 or a negative errno as everywhere in ioplex (-ENOENT, -EACCES
 * for files, -EINVAL for a bad certificate, key or password, -EPROTO for a
 * peer that broke the protocol, -ENOMEM).  Words for the reason go to an
 * optional struct iop_tls_error, which the caller may print; the library
 * never prints.  A transport keeps the reason of its failure
 * (iop_tls_why()).
 *
 * Threads: a context may be shared by any number of threads (reload
 * included); a transport belongs to one thread at a time.
 */
#ifndef IOPLEX_TLS_H
#define IOPLEX_TLS_H

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct iop_tls_ctx iop_tls_ctx;
typedef struct iop_tls iop_tls;
/* OpenSSL's own types, for the calls that take or give them. */
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

/* Where a failed context call says why, e.g. "tls: cannot read key
 * /etc/x.key: bad decrypt (wrong password?)". */
struct iop_tls_error {
    char msg[256];
};

struct iop_tls_server_config {
    const char *cert_file;     /* PEM: the certificate, then its chain */
    const char *key_file;      /* PEM private key (encrypted: password_file) */
    const char *password_file; /* NULL, or a file whose first line is the key's password */
    /* Protocols to offer by ALPN, most preferred first, comma-separated
     * ("http/1.1", later "h2,http/1.1"); NULL: no ALPN.  A client offering
     * none of them is served without ALPN. */
    const char *alpn;
    /* Session tickets' key lifetime in seconds (0: 3600).  Tickets made
     * with the previous key are still accepted (and renewed), so a ticket
     * lives from one to two periods. */
    unsigned ticket_period_s;
    unsigned flags; /* IOP_TLS_* below */
};

#define IOP_TLS_NO_KTLS    0x1u /* never enable kernel TLS */
#define IOP_TLS_NO_TICKETS 0x2u /* no session resumption */

/* A server context from cert_file and key_file, checked to match.  On
 * failure *out is untouched and err (if given) says why. */
int iop_tls_server_new(const struct iop_tls_server_config *cfg, struct iop_tls_error *err,
                       iop_tls_ctx **out);

/* A context over the caller's SSL_CTX (server or client method), which
 * it references (SSL_CTX_up_ref): the caller may free its own reference.
 * Its settings are used as they are; iop_tls_ctx_reload() then fails with
 * -ENOTSUP. */
int iop_tls_ctx_from_ssl_ctx(SSL_CTX *ssl_ctx, int is_server, iop_tls_ctx **out);

struct iop_tls_client_config {
    const char *ca_file; /* PEM trust anchors; NULL: the system's store */
    int insecure;        /* non-zero: do not verify the peer at all */
    const char *alpn;    /* as for servers; NULL: none offered */
};

int iop_tls_client_new(const struct iop_tls_client_config *cfg, struct iop_tls_error *err,
                       iop_tls_ctx **out);

/* Read cert_file and key_file again (and the password).  On success new
 * handshakes use the new pair; transports already made keep theirs, and
 * ticket keys are kept (a ticket stays good across a reload).  On failure
 * the old pair stays in use and err says why.  Thread-safe. */
int iop_tls_ctx_reload(iop_tls_ctx *ctx, struct iop_tls_error *err);

/* Whether kernel TLS is enabled on this context (SSL_OP_ENABLE_KTLS): the
 * kernel offers it and the config did not refuse it.  OpenSSL hands the
 * keys to the kernel only when it owns the socket, so a transport fed
 * through memory (below) still encrypts in user space. */
int iop_tls_ctx_ktls(const iop_tls_ctx *ctx);
int iop_tls_ctx_is_server(const iop_tls_ctx *ctx);

/* Free a context.  Transports made from it keep what they need and may
 * outlive it. */
void iop_tls_ctx_free(iop_tls_ctx *ctx);

/* Whether the kernel offers kernel TLS (`tls` in
 * /proc/sys/net/ipv4/tcp_available_ulp) and OpenSSL was built with it. */
int iop_tls_ktls_available(void);

/* ---- the transport -------------------------------------------------------
 * Typical use, whatever the IO:
 *   bytes arrived  -> iop_tls_feed(t, buf, n); then iop_tls_read() until
 *                     -EAGAIN; then send iop_tls_out() (the handshake and
 *                     alerts produce ciphertext too)
 *   want to send   -> iop_tls_write(); then send iop_tls_out()
 *   peer's FIN     -> iop_tls_feed_eof(t)
 * A transport holds at most IOP_TLS_OUT_MAX bytes of unsent ciphertext from
 * writes: past it iop_tls_write() says -EAGAIN until iop_tls_out_done()
 * drained it, which bounds memory per slow reader. */
#define IOP_TLS_OUT_MAX (64u * 1024)

/* A transport for one connection.  server_name: for a client context the
 * name sent by SNI and checked against the certificate (an IP literal is
 * checked, not sent); NULL for a server context. */
int iop_tls_new(iop_tls_ctx *ctx, const char *server_name, iop_tls **out);
void iop_tls_free(iop_tls *t);

/* Ciphertext from the peer, copied in: 0, or -ENOMEM. */
int iop_tls_feed(iop_tls *t, const void *cipher, size_t n);
/* Or without the copy: room for at least `want` bytes of ciphertext
 * (*cap may be more) to recv into, then iop_tls_feed_commit() with what
 * came.  NULL: -ENOMEM. */
void *iop_tls_feed_space(iop_tls *t, size_t want, size_t *cap);
void iop_tls_feed_commit(iop_tls *t, size_t n);
/* The peer closed its side of the TCP connection. */
void iop_tls_feed_eof(iop_tls *t);

/* Drive the handshake: 1 done, 0 more input is needed (send iop_tls_out()
 * first), or -errno (-EPROTO: see iop_tls_why()). */
int iop_tls_handshake(iop_tls *t);
int iop_tls_handshake_done(const iop_tls *t);

/* Plaintext out: > 0 bytes, 0 the peer closed (close_notify, or a FIN with
 * nothing pending), -EAGAIN more ciphertext needed, or -errno.  Runs the
 * handshake first if it is not done. */
ssize_t iop_tls_read(iop_tls *t, void *buf, size_t cap);
/* Plaintext in: the bytes taken (all of n, in records of up to 16 KiB,
 * unless IOP_TLS_OUT_MAX was reached: then a part, or -EAGAIN for none),
 * or -errno.  Before the handshake is done: -EAGAIN. */
ssize_t iop_tls_write(iop_tls *t, const void *buf, size_t n);
/* Send close_notify (once): 0 or -errno.  Then send iop_tls_out(). */
int iop_tls_shutdown(iop_tls *t);

/* The ciphertext waiting to be sent: *len bytes at the result (NULL when
 * none), valid until the next call on t.  iop_tls_out_done() drops n of
 * them once the kernel took them. */
const void *iop_tls_out(iop_tls *t, size_t *len);
void iop_tls_out_done(iop_tls *t, size_t n);
size_t iop_tls_out_pending(const iop_tls *t);

/* Why the transport failed (OpenSSL's reason, e.g. "wrong version number",
 * "unsupported protocol"), or NULL.  Static storage. */
const char *iop_tls_why(const iop_tls *t);
/* The protocol chosen by ALPN (*len bytes, not NUL-terminated), or NULL. */
const char *iop_tls_alpn(const iop_tls *t, size_t *len);
/* Whether the handshake resumed a session. */
int iop_tls_resumed(const iop_tls *t);
/* "TLSv1.3", "TLSv1.2". */
const char *iop_tls_version(const iop_tls *t);
/* The OpenSSL object, for what this header does not cover (e.g.
 * SSL_get1_session() on a client to resume later with SSL_set_session()
 * before the first feed). */
SSL *iop_tls_ssl(iop_tls *t);

#ifdef __cplusplus
}
#endif

#endif

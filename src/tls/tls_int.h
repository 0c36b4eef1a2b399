/* tls_int.h - what the context and transport halves of src/tls share.
 *
 * ctx.c        contexts: files, policy, ticket keys, reload, kTLS probe
 * transport.c  one connection's SSL over a memory BIO of our own
 */
#ifndef IOP_TLS_INT_H
#define IOP_TLS_INT_H

#include <pthread.h>

#include "ioplex/tls.h"

struct iop_tls_ctx {
    pthread_mutex_t mu; /* guards cur: reload swaps it under transports' feet */
    SSL_CTX *cur;       /* the SSL_CTX new transports are made from */
    int refs;           /* the owner's + one per transport (atomic) */
    int is_server, user_ctx, ktls;
    unsigned flags, ticket_period_s;
    char *cert_file, *key_file, *password_file, *ca_file;
    int insecure;
    unsigned char *alpn; /* wire form: length-prefixed names */
    size_t alpn_len;
    /* Ticket keys are derived from this and the period number, so every
     * worker process forked from one context agrees on them without talking,
     * and a reload keeps them. */
    unsigned char ticket_master[32];
};

/* ctx.c: the current SSL_CTX, referenced for the caller (SSL_new takes its
 * own reference, so the caller frees it right after). */
SSL_CTX *iop__tls_ctx_current(iop_tls_ctx *ctx);
void iop__tls_ctx_ref(iop_tls_ctx *ctx);
void iop__tls_ctx_unref(iop_tls_ctx *ctx);

#endif

/* ctx.c - TLS contexts: certificate and key, policy, session tickets,
 * reload, and whether the kernel can do TLS.
 *
 * Ticket keys: OpenSSL's built-in tickets use one random key per SSL_CTX
 * and never rotate it, and a reload (a new SSL_CTX) would drop every
 * ticket.  So the context installs a key callback
 * (SSL_CTX_set_tlsext_ticket_key_evp_cb) that derives the keys of period
 * number p = now / ticket_period_s from a random master secret by
 * HMAC-SHA256: tickets are sealed with period p's keys, and those of p and
 * p-1 are accepted (p-1's renewed).  Worker processes forked from one
 * context derive the same keys without sharing state.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include "tls/tls_int.h"

#define TICKET_PERIOD_DEFAULT 3600u

static int say(struct iop_tls_error *err, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int say(struct iop_tls_error *err, int rc, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    ERR_clear_error();
    return rc;
}

/* OpenSSL's reason for the last failure, in words. */
static const char *ossl_why(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown error";
}

int iop_tls_ktls_available(void)
{
#ifdef OPENSSL_NO_KTLS
    return 0;
#else
    char buf[256];
    int fd = open("/proc/sys/net/ipv4/tcp_available_ulp", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    for (char *save = NULL, *w = strtok_r(buf, " \n", &save); w; w = strtok_r(NULL, " \n", &save))
        if (strcmp(w, "tls") == 0)
            return 1;
    return 0;
#endif
}

/* "h2,http/1.1" -> "\x02h2\x08http/1.1"; -EINVAL for an empty or too long
 * name. */
static int alpn_wire(const char *list, unsigned char **out, size_t *outlen)
{
    size_t n = strlen(list);
    unsigned char *w = malloc(n + 1);
    if (!w)
        return -ENOMEM;
    size_t len = 0;
    for (const char *p = list;;) {
        const char *c = strchr(p, ',');
        size_t l = c ? (size_t)(c - p) : strlen(p);
        if (l == 0 || l > 255) {
            free(w);
            return -EINVAL;
        }
        w[len++] = (unsigned char)l;
        memcpy(w + len, p, l);
        len += l;
        if (!c)
            break;
        p = c + 1;
    }
    *out = w;
    *outlen = len;
    return 0;
}

/* -ENOENT / -EACCES with words before OpenSSL says something vaguer. */
static int check_readable(const char *what, const char *path, struct iop_tls_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return say(err, -e, "tls: cannot read %s %s: %s", what, path, strerror(e));
    }
    close(fd);
    return 0;
}

/* The first line of path, without its newline, in buf. */
static int read_password(const char *path, char *buf, size_t cap, struct iop_tls_error *err)
{
    int rc = check_readable("password file", path, err);
    if (rc < 0)
        return rc;
    FILE *f = fopen(path, "re");
    if (!f)
        return say(err, -errno, "tls: cannot read password file %s: %s", path, strerror(errno));
    if (!fgets(buf, (int)cap, f))
        buf[0] = '\0';
    fclose(f);
    buf[strcspn(buf, "\r\n")] = '\0';
    return 0;
}

/* The password for an encrypted key; none given: 0 bytes, so OpenSSL
 * fails instead of asking on a terminal. */
static int password_cb(char *buf, int size, int rwflag, void *u)
{
    (void)rwflag;
    const char *pw = u;
    if (!pw)
        return 0;
    int n = (int)strlen(pw);
    if (n > size)
        n = size;
    memcpy(buf, pw, (size_t)n);
    return n;
}

/* ---- ticket keys ------------------------------------------------------ */

static void derive(const iop_tls_ctx *c, const char *label, uint64_t period, unsigned char *out,
                   size_t len)
{
    unsigned char msg[16] = {0}, mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    memcpy(msg, label, strlen(label));
    for (int i = 0; i < 8; i++)
        msg[8 + i] = (unsigned char)(period >> (56 - 8 * i));
    HMAC(EVP_sha256(), c->ticket_master, sizeof c->ticket_master, msg, sizeof msg, mac, &maclen);
    memcpy(out, mac, len);
    OPENSSL_cleanse(mac, sizeof mac);
}

static int ticket_keys(const iop_tls_ctx *c, uint64_t period, const unsigned char *iv,
                       EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    unsigned char aes[32], mac[32];
    derive(c, "aes", period, aes, sizeof aes);
    derive(c, "mac", period, mac, sizeof mac);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, mac, sizeof mac),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    int ok = EVP_CipherInit_ex(cctx, EVP_aes_256_cbc(), NULL, aes, iv, enc) &&
             EVP_MAC_CTX_set_params(hctx, params);
    OPENSSL_cleanse(aes, sizeof aes);
    OPENSSL_cleanse(mac, sizeof mac);
    return ok;
}

static int ticket_cb(SSL *s, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    const iop_tls_ctx *c = SSL_CTX_get_app_data(SSL_get_SSL_CTX(s));
    uint64_t now = (uint64_t)time(NULL) / c->ticket_period_s;
    if (enc) {
        derive(c, "name", now, name, 16);
        if (RAND_bytes(iv, EVP_CIPHER_iv_length(EVP_aes_256_cbc())) != 1)
            return -1;
        return ticket_keys(c, now, iv, cctx, hctx, 1) ? 1 : -1;
    }
    for (int age = 0; age < 2 && now >= (uint64_t)age; age++) {
        unsigned char n[16];
        derive(c, "name", now - (uint64_t)age, n, sizeof n);
        if (memcmp(n, name, sizeof n) != 0)
            continue;
        if (!ticket_keys(c, now - (uint64_t)age, iv, cctx, hctx, 0))
            return -1;
        return age == 0 ? 1 : 2; /* 2: good, but issue a fresh ticket */
    }
    return 0; /* unknown or expired: a full handshake */
}

/* ---- SSL_CTX ---------------------------------------------------------- */

static int alpn_select_cb(SSL *s, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned inlen, void *arg)
{
    (void)s;
    const iop_tls_ctx *c = arg;
    unsigned char *o = NULL;
    if (SSL_select_next_proto(&o, outlen, c->alpn, (unsigned)c->alpn_len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

/* The policy every context of ours has. */
static int policy(SSL_CTX *sc)
{
    SSL_CTX_set_options(sc, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* An idle connection holds no record buffers. */
    SSL_CTX_set_mode(sc, SSL_MODE_RELEASE_BUFFERS);
    return SSL_CTX_set_min_proto_version(sc, TLS1_2_VERSION) == 1 ? 0 : -EINVAL;
}

/* A server SSL_CTX from c's files; err says why not. */
static int server_ssl_ctx(iop_tls_ctx *c, struct iop_tls_error *err, SSL_CTX **out)
{
    int rc;
    char pw[1024];
    pw[0] = '\0';
    if ((rc = check_readable("certificate", c->cert_file, err)) < 0 ||
        (rc = check_readable("key", c->key_file, err)) < 0)
        return rc;
    if (c->password_file && (rc = read_password(c->password_file, pw, sizeof pw, err)) < 0)
        return rc;
    SSL_CTX *sc = SSL_CTX_new(TLS_server_method());
    if (!sc)
        return say(err, -ENOMEM, "tls: %s", ossl_why());
    rc = policy(sc);
    SSL_CTX_set_default_passwd_cb(sc, password_cb);
    SSL_CTX_set_default_passwd_cb_userdata(sc, c->password_file ? pw : NULL);
    if (rc == 0 && SSL_CTX_use_certificate_chain_file(sc, c->cert_file) != 1)
        rc = say(err, -EINVAL, "tls: cannot load certificate %s: %s", c->cert_file, ossl_why());
    if (rc == 0 && SSL_CTX_use_PrivateKey_file(sc, c->key_file, SSL_FILETYPE_PEM) != 1)
        rc = say(err, -EINVAL, "tls: cannot load key %s: %s%s", c->key_file, ossl_why(),
                 c->password_file ? " (wrong password?)" : " (encrypted? see --tls-password-file)");
    if (rc == 0 && SSL_CTX_check_private_key(sc) != 1)
        rc = say(err, -EINVAL, "tls: key %s does not match certificate %s", c->key_file,
                 c->cert_file);
    OPENSSL_cleanse(pw, sizeof pw);
    SSL_CTX_set_default_passwd_cb_userdata(sc, NULL);
    if (rc < 0) {
        SSL_CTX_free(sc);
        return rc;
    }
    SSL_CTX_set_app_data(sc, c);
    SSL_CTX_set_session_cache_mode(sc, SSL_SESS_CACHE_OFF);
    if (c->flags & IOP_TLS_NO_TICKETS) {
        SSL_CTX_set_options(sc, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(sc, 0);
    } else {
        SSL_CTX_set_tlsext_ticket_key_evp_cb(sc, ticket_cb);
        SSL_CTX_set_num_tickets(sc, 1);
        SSL_CTX_set_timeout(sc, (long)c->ticket_period_s);
    }
    if (c->alpn)
        SSL_CTX_set_alpn_select_cb(sc, alpn_select_cb, c);
    if (c->ktls)
        SSL_CTX_set_options(sc, SSL_OP_ENABLE_KTLS);
    *out = sc;
    return 0;
}

static char *dup_opt(const char *s, int *bad)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *bad = 1;
    return d;
}

static void ctx_free_fields(iop_tls_ctx *c)
{
    free(c->cert_file);
    free(c->key_file);
    free(c->password_file);
    free(c->ca_file);
    free(c->alpn);
    OPENSSL_cleanse(c->ticket_master, sizeof c->ticket_master);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static int ctx_alloc(int is_server, const char *alpn, struct iop_tls_error *err, iop_tls_ctx **out)
{
    iop_tls_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return say(err, -ENOMEM, "tls: out of memory");
    pthread_mutex_init(&c->mu, NULL);
    c->refs = 1;
    c->is_server = is_server;
    if (alpn) {
        int rc = alpn_wire(alpn, &c->alpn, &c->alpn_len);
        if (rc < 0) {
            ctx_free_fields(c);
            return say(err, rc, "tls: bad ALPN list \"%s\"", alpn);
        }
    }
    *out = c;
    return 0;
}

int iop_tls_server_new(const struct iop_tls_server_config *cfg, struct iop_tls_error *err,
                       iop_tls_ctx **out)
{
    if (!cfg || !cfg->cert_file || !cfg->key_file || !out)
        return say(err, -EINVAL, "tls: a certificate and a key are both needed");
    iop_tls_ctx *c = NULL;
    int rc = ctx_alloc(1, cfg->alpn, err, &c);
    if (rc < 0)
        return rc;
    int bad = 0;
    c->cert_file = dup_opt(cfg->cert_file, &bad);
    c->key_file = dup_opt(cfg->key_file, &bad);
    c->password_file = dup_opt(cfg->password_file, &bad);
    c->flags = cfg->flags;
    c->ticket_period_s = cfg->ticket_period_s ? cfg->ticket_period_s : TICKET_PERIOD_DEFAULT;
    c->ktls = !(cfg->flags & IOP_TLS_NO_KTLS) && iop_tls_ktls_available();
    if (bad)
        rc = say(err, -ENOMEM, "tls: out of memory");
    else if (RAND_bytes(c->ticket_master, sizeof c->ticket_master) != 1)
        rc = say(err, -EIO, "tls: no randomness: %s", ossl_why());
    else
        rc = server_ssl_ctx(c, err, &c->cur);
    if (rc < 0) {
        ctx_free_fields(c);
        return rc;
    }
    *out = c;
    return 0;
}

int iop_tls_client_new(const struct iop_tls_client_config *cfg, struct iop_tls_error *err,
                       iop_tls_ctx **out)
{
    static const struct iop_tls_client_config none;
    if (!cfg)
        cfg = &none;
    iop_tls_ctx *c = NULL;
    int rc = ctx_alloc(0, cfg->alpn, err, &c);
    if (rc < 0)
        return rc;
    c->insecure = cfg->insecure;
    SSL_CTX *sc = SSL_CTX_new(TLS_client_method());
    if (!sc) {
        rc = say(err, -ENOMEM, "tls: %s", ossl_why());
    } else if ((rc = policy(sc)) < 0) {
        say(err, rc, "tls: %s", ossl_why());
    } else if (cfg->ca_file && (rc = check_readable("CA file", cfg->ca_file, err)) < 0) {
        /* said */
    } else if (cfg->ca_file ? SSL_CTX_load_verify_locations(sc, cfg->ca_file, NULL) != 1
                            : SSL_CTX_set_default_verify_paths(sc) != 1) {
        rc = say(err, -EINVAL, "tls: cannot load CA %s: %s",
                 cfg->ca_file ? cfg->ca_file : "(system store)", ossl_why());
    } else if (c->alpn && SSL_CTX_set_alpn_protos(sc, c->alpn, (unsigned)c->alpn_len) != 0) {
        rc = say(err, -ENOMEM, "tls: %s", ossl_why());
    }
    if (rc < 0) {
        SSL_CTX_free(sc);
        ctx_free_fields(c);
        return rc;
    }
    SSL_CTX_set_verify(sc, cfg->insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    c->cur = sc;
    *out = c;
    return 0;
}

int iop_tls_ctx_from_ssl_ctx(SSL_CTX *ssl_ctx, int is_server, iop_tls_ctx **out)
{
    if (!ssl_ctx || !out)
        return -EINVAL;
    iop_tls_ctx *c = NULL;
    int rc = ctx_alloc(is_server, NULL, NULL, &c);
    if (rc < 0)
        return rc;
    SSL_CTX_up_ref(ssl_ctx);
    c->cur = ssl_ctx;
    c->user_ctx = 1;
    c->ktls = (SSL_CTX_get_options(ssl_ctx) & SSL_OP_ENABLE_KTLS) != 0;
    *out = c;
    return 0;
}

int iop_tls_ctx_reload(iop_tls_ctx *ctx, struct iop_tls_error *err)
{
    if (ctx->user_ctx || !ctx->is_server)
        return say(err, -ENOTSUP, "tls: this context has no files to reload");
    SSL_CTX *sc;
    int rc = server_ssl_ctx(ctx, err, &sc);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&ctx->mu);
    SSL_CTX *old = ctx->cur;
    ctx->cur = sc;
    pthread_mutex_unlock(&ctx->mu);
    /* Transports made from old hold their own references. */
    SSL_CTX_free(old);
    return 0;
}

SSL_CTX *iop__tls_ctx_current(iop_tls_ctx *ctx)
{
    pthread_mutex_lock(&ctx->mu);
    SSL_CTX *sc = ctx->cur;
    SSL_CTX_up_ref(sc);
    pthread_mutex_unlock(&ctx->mu);
    return sc;
}

int iop_tls_ctx_ktls(const iop_tls_ctx *ctx)
{
    return ctx->ktls;
}

int iop_tls_ctx_is_server(const iop_tls_ctx *ctx)
{
    return ctx->is_server;
}

void iop__tls_ctx_ref(iop_tls_ctx *ctx)
{
    __atomic_add_fetch(&ctx->refs, 1, __ATOMIC_RELAXED);
}

void iop__tls_ctx_unref(iop_tls_ctx *ctx)
{
    if (__atomic_sub_fetch(&ctx->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    SSL_CTX_free(ctx->cur);
    ctx_free_fields(ctx);
}

void iop_tls_ctx_free(iop_tls_ctx *ctx)
{
    if (ctx)
        iop__tls_ctx_unref(ctx);
}

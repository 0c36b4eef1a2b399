/* test_tls.c - the TLS contexts and the memory transport: a server and a
 * client transport paired in memory, no sockets.  Certificates are made
 * by the openssl command in a temporary directory for each test. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "ioplex/common.h"
#include "ioplex/tls.h"
#include "runner.h"
#include "tls_helpers.h"

static iop_tls_ctx *server_ctx(const char *cert, const char *key, const char *pw)
{
    struct iop_tls_server_config cfg = {
        .cert_file = cert, .key_file = key, .password_file = pw, .alpn = "http/1.1"};
    struct iop_tls_error err = {{0}};
    iop_tls_ctx *ctx = NULL;
    int rc = iop_tls_server_new(&cfg, &err, &ctx);
    if (rc < 0)
        iop_test_fail(__FILE__, __LINE__, "server ctx: %s (%s)", err.msg, iop_strerror(rc));
    return ctx;
}

static iop_tls_ctx *client_ctx(const char *ca, int insecure)
{
    struct iop_tls_client_config cfg = {.ca_file = ca, .insecure = insecure, .alpn = "http/1.1"};
    struct iop_tls_error err = {{0}};
    iop_tls_ctx *ctx = NULL;
    int rc = iop_tls_client_new(&cfg, &err, &ctx);
    if (rc < 0)
        iop_test_fail(__FILE__, __LINE__, "client ctx: %s (%s)", err.msg, iop_strerror(rc));
    return ctx;
}

/* Move every byte of ciphertext a has to send into b; the count. */
static size_t move(iop_tls *a, iop_tls *b)
{
    size_t len, moved = 0;
    const void *p;
    while ((p = iop_tls_out(a, &len)) != NULL) {
        CHECK_OK(iop_tls_feed(b, p, len));
        iop_tls_out_done(a, len);
        moved += len;
    }
    return moved;
}

/* Drive both handshakes until neither side has anything to say: the
 * client's result (1 done, or -errno); *srv_rc the server's. */
static int pair_handshake(iop_tls *cli, iop_tls *srv, int *srv_rc)
{
    int rc_c = 0, rc_s = 0;
    for (int round = 0; round < 20; round++) {
        rc_c = iop_tls_handshake(cli);
        size_t m = move(cli, srv);
        rc_s = iop_tls_handshake(srv);
        m += move(srv, cli);
        if (rc_c < 0 || rc_s < 0 || (rc_c == 1 && rc_s == 1 && m == 0))
            break;
    }
    if (srv_rc)
        *srv_rc = rc_s;
    return rc_c;
}

/* Read everything b can give now into out (up to cap): the bytes. */
static size_t drain(iop_tls *b, char *out, size_t cap)
{
    size_t got = 0;
    for (;;) {
        ssize_t n = iop_tls_read(b, out + got, cap - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return got;
}

static void send_text(iop_tls *a, iop_tls *b, const char *text)
{
    char got[256];
    CHECK_EQ(iop_tls_write(a, text, strlen(text)), strlen(text));
    move(a, b);
    size_t n = drain(b, got, sizeof got);
    CHECK_EQ(n, strlen(text));
    CHECK(memcmp(got, text, n) == 0);
}

static void handshake_and_talk(const char *cert, const char *key, const char *pw)
{
    iop_tls_ctx *sctx = server_ctx(cert, key, pw), *cctx = client_ctx(cert, 0);
    iop_tls *srv, *cli;
    CHECK_OK(iop_tls_new(sctx, NULL, &srv));
    CHECK_OK(iop_tls_new(cctx, "localhost", &cli));
    int srv_rc;
    CHECK_EQ(pair_handshake(cli, srv, &srv_rc), 1);
    CHECK_EQ(srv_rc, 1);
    CHECK(strcmp(iop_tls_version(srv), "TLSv1.3") == 0);
    size_t alen;
    const char *alpn = iop_tls_alpn(srv, &alen);
    CHECK(alpn && alen == 8 && memcmp(alpn, "http/1.1", 8) == 0);
    send_text(cli, srv, "GET / HTTP/1.1\r\n\r\n");
    send_text(srv, cli, "HTTP/1.1 200 OK\r\n\r\n");
    /* close_notify: the other side reads 0. */
    CHECK_OK(iop_tls_shutdown(srv));
    move(srv, cli);
    char b[16];
    CHECK_EQ(iop_tls_read(cli, b, sizeof b), 0);
    iop_tls_free(srv);
    iop_tls_free(cli);
    iop_tls_ctx_free(sctx);
    iop_tls_ctx_free(cctx);
}

IOP_TEST(tls_handshake_ecdsa_and_rsa, be)
{
    (void)be;
    struct certs c;
    make_certs(&c, 1);
    handshake_and_talk(c.ec_cert, c.ec_key, NULL);
    handshake_and_talk(c.rsa_cert, c.rsa_key, NULL);
    handshake_and_talk(c.ec_cert, c.enc_key, c.pw);
    drop_certs(&c);
}

IOP_TEST(tls_big_writes_are_bounded, be)
{
    (void)be;
    struct certs c;
    make_certs(&c, 0);
    iop_tls_ctx *sctx = server_ctx(c.ec_cert, c.ec_key, NULL), *cctx = client_ctx(NULL, 1);
    iop_tls *srv, *cli;
    CHECK_OK(iop_tls_new(sctx, NULL, &srv));
    CHECK_OK(iop_tls_new(cctx, "localhost", &cli));
    /* Before the handshake nothing is taken. */
    CHECK_EQ(iop_tls_write(srv, "x", 1), -EAGAIN);
    CHECK_EQ(pair_handshake(cli, srv, NULL), 1);
    size_t total = 1 << 20, sent = 0, got = 0;
    char *big = malloc(total), *back = malloc(total);
    for (size_t i = 0; i < total; i++)
        big[i] = (char)(i * 7 + (i >> 13));
    while (got < total) {
        ssize_t w = iop_tls_write(srv, big + sent, total - sent);
        if (w > 0)
            sent += (size_t)w;
        else
            CHECK_EQ(w, -EAGAIN);
        /* Never more than the bound plus one record's overhead. */
        CHECK(iop_tls_out_pending(srv) <= IOP_TLS_OUT_MAX + 1024);
        CHECK_EQ(iop_tls_write(srv, big, 1) == -EAGAIN || sent < total, 1);
        move(srv, cli);
        got += drain(cli, back + got, total - got);
    }
    CHECK_EQ(sent, total);
    CHECK(memcmp(big, back, total) == 0);
    free(big);
    free(back);
    iop_tls_free(srv);
    iop_tls_free(cli);
    iop_tls_ctx_free(sctx);
    iop_tls_ctx_free(cctx);
    drop_certs(&c);
}

/* A TLS 1.3 (or 1.2) session resumed by its ticket, across a reload too. */
static void resume(iop_tls_ctx *sctx, int max_version)
{
    iop_tls_ctx *cctx = client_ctx(NULL, 1);
    SSL_SESSION *sess = NULL;
    for (int round = 0; round < 3; round++) {
        iop_tls *srv, *cli;
        CHECK_OK(iop_tls_new(sctx, NULL, &srv));
        CHECK_OK(iop_tls_new(cctx, "localhost", &cli));
        SSL_set_max_proto_version(iop_tls_ssl(cli), max_version);
        if (sess)
            CHECK(SSL_set_session(iop_tls_ssl(cli), sess) == 1);
        CHECK_EQ(pair_handshake(cli, srv, NULL), 1);
        /* The TLS 1.3 ticket comes after the handshake: data carries it. */
        send_text(srv, cli, "hello");
        CHECK_EQ(iop_tls_resumed(srv), round > 0);
        CHECK_EQ(iop_tls_resumed(cli), round > 0);
        SSL_SESSION_free(sess);
        sess = SSL_get1_session(iop_tls_ssl(cli));
        /* OpenSSL spoils the session of a connection freed without
         * close_notify: a client says goodbye to keep it. */
        CHECK_OK(iop_tls_shutdown(cli));
        iop_tls_free(srv);
        iop_tls_free(cli);
        CHECK(sess && SSL_SESSION_is_resumable(sess));
        if (round == 1)
            CHECK_OK(iop_tls_ctx_reload(sctx, NULL));
    }
    SSL_SESSION_free(sess);
    iop_tls_ctx_free(cctx);
}

IOP_TEST(tls_resumption_by_ticket, be)
{
    (void)be;
    struct certs c;
    make_certs(&c, 0);
    iop_tls_ctx *sctx = server_ctx(c.ec_cert, c.ec_key, NULL);
    resume(sctx, TLS1_3_VERSION);
    resume(sctx, TLS1_2_VERSION);
    iop_tls_ctx_free(sctx);
    drop_certs(&c);
}

IOP_TEST(tls_old_versions_refused, be)
{
    (void)be;
    struct certs c;
    make_certs(&c, 0);
    iop_tls_ctx *sctx = server_ctx(c.ec_cert, c.ec_key, NULL);
    for (int v = TLS1_VERSION; v <= TLS1_1_VERSION; v++) {
        /* A client that speaks only the old version (security level 0, or
         * OpenSSL would not even offer it). */
        SSL_CTX *old = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_security_level(old, 0);
        CHECK(SSL_CTX_set_min_proto_version(old, v) == 1);
        CHECK(SSL_CTX_set_max_proto_version(old, v) == 1);
        SSL_CTX_set_verify(old, SSL_VERIFY_NONE, NULL);
        iop_tls_ctx *cctx;
        CHECK_OK(iop_tls_ctx_from_ssl_ctx(old, 0, &cctx));
        SSL_CTX_free(old);
        iop_tls *srv, *cli;
        CHECK_OK(iop_tls_new(sctx, NULL, &srv));
        CHECK_OK(iop_tls_new(cctx, NULL, &cli));
        int srv_rc;
        pair_handshake(cli, srv, &srv_rc);
        CHECK_EQ(srv_rc, -EPROTO);
        CHECK(iop_tls_why(srv) && strstr(iop_tls_why(srv), "unsupported protocol"));
        CHECK(iop_tls_handshake(cli) < 0); /* the server's alert */
        iop_tls_free(srv);
        iop_tls_free(cli);
        iop_tls_ctx_free(cctx);
    }
    iop_tls_ctx_free(sctx);
    drop_certs(&c);
}

IOP_TEST(tls_garbage_and_truncated_handshakes, be)
{
    (void)be;
    struct certs c;
    make_certs(&c, 0);
    iop_tls_ctx *sctx = server_ctx(c.ec_cert, c.ec_key, NULL), *cctx = client_ctx(NULL, 1);
    iop_tls *srv;
    /* An HTTP request where a ClientHello belongs. */
    CHECK_OK(iop_tls_new(sctx, NULL, &srv));
    const char *get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK_OK(iop_tls_feed(srv, get, strlen(get)));
    CHECK_EQ(iop_tls_handshake(srv), -EPROTO);
    CHECK(iop_tls_why(srv) != NULL);
    char b[64];
    CHECK_EQ(iop_tls_read(srv, b, sizeof b), -EPROTO);
    iop_tls_free(srv);

    /* Half a ClientHello, then the peer's FIN. */
    iop_tls *cli;
    CHECK_OK(iop_tls_new(sctx, NULL, &srv));
    CHECK_OK(iop_tls_new(cctx, "localhost", &cli));
    CHECK_EQ(iop_tls_handshake(cli), 0);
    size_t len;
    const char *hello = iop_tls_out(cli, &len);
    CHECK(hello && len > 20);
    CHECK_OK(iop_tls_feed(srv, hello, len / 2));
    CHECK_EQ(iop_tls_handshake(srv), 0); /* waits for the rest */
    iop_tls_feed_eof(srv);
    CHECK_EQ(iop_tls_handshake(srv), -ECONNRESET);
    iop_tls_free(srv);
    iop_tls_free(cli);

    /* Bytes past the handshake that are not a record. */
    CHECK_OK(iop_tls_new(sctx, NULL, &srv));
    CHECK_OK(iop_tls_new(cctx, "localhost", &cli));
    CHECK_EQ(pair_handshake(cli, srv, NULL), 1);
    CHECK_OK(iop_tls_feed(srv, "\x17\x03\x03\x00\x05zzzzz", 10));
    CHECK_EQ(iop_tls_read(srv, b, sizeof b), -EPROTO);
    iop_tls_free(srv);
    iop_tls_free(cli);
    iop_tls_ctx_free(sctx);
    iop_tls_ctx_free(cctx);
    drop_certs(&c);
}

IOP_TEST(tls_client_verifies, be)
{
    (void)be;
    struct certs c;
    make_certs(&c, 1);
    iop_tls_ctx *sctx = server_ctx(c.ec_cert, c.ec_key, NULL);
    struct {
        const char *ca, *name;
        int insecure, ok;
    } cases[] = {
        {c.ec_cert, "localhost", 0, 1},   {c.ec_cert, "127.0.0.1", 0, 1},
        {c.ec_cert, "example.com", 0, 0}, {c.rsa_cert, "localhost", 0, 0},
        {NULL, "localhost", 0, 0},        {c.rsa_cert, "example.com", 1, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        iop_tls_ctx *cctx = client_ctx(cases[i].ca, cases[i].insecure);
        iop_tls *srv, *cli;
        CHECK_OK(iop_tls_new(sctx, NULL, &srv));
        CHECK_OK(iop_tls_new(cctx, cases[i].name, &cli));
        int rc = pair_handshake(cli, srv, NULL);
        if (cases[i].ok != (rc == 1))
            iop_test_fail(__FILE__, __LINE__, "case %zu: handshake %d (%s)", i, rc,
                          iop_tls_why(cli) ? iop_tls_why(cli) : "-");
        iop_tls_free(srv);
        iop_tls_free(cli);
        iop_tls_ctx_free(cctx);
    }
    iop_tls_ctx_free(sctx);
    drop_certs(&c);
}

static void expect_bad(const char *cert, const char *key, const char *pw, int rc_want,
                       const char *word)
{
    struct iop_tls_server_config cfg = {.cert_file = cert, .key_file = key, .password_file = pw};
    struct iop_tls_error err = {{0}};
    iop_tls_ctx *ctx = NULL;
    int rc = iop_tls_server_new(&cfg, &err, &ctx);
    if (rc != rc_want || !strstr(err.msg, word) || ctx)
        iop_test_fail(__FILE__, __LINE__, "%s/%s: rc %d, \"%s\" (want %d, \"%s\")", cert, key, rc,
                      err.msg, rc_want, word);
}

IOP_TEST(tls_bad_cert_key_password, be)
{
    (void)be;
    struct certs c;
    make_certs(&c, 1);
    expect_bad("/nonexistent.crt", c.ec_key, NULL, -ENOENT, "/nonexistent.crt");
    expect_bad(c.ec_cert, "/nonexistent.key", NULL, -ENOENT, "/nonexistent.key");
    expect_bad(c.ec_cert, c.rsa_key, NULL, -EINVAL, "does not match");
    expect_bad(c.ec_key, c.ec_key, NULL, -EINVAL, "certificate");
    expect_bad(c.ec_cert, c.enc_key, NULL, -EINVAL, "password");
    expect_bad(c.ec_cert, c.enc_key, c.badpw, -EINVAL, "wrong password");
    expect_bad(c.ec_cert, c.enc_key, "/nonexistent.pw", -ENOENT, "password file");
    drop_certs(&c);
}

IOP_TEST(tls_reload, be)
{
    (void)be;
    struct certs c;
    make_certs(&c, 1);
    char cert[128], key[128];
    snprintf(cert, sizeof cert, "%s/live.crt", c.dir);
    snprintf(key, sizeof key, "%s/live.key", c.dir);
    sh("cp %s %s && cp %s %s", c.ec_cert, cert, c.ec_key, key);
    iop_tls_ctx *sctx = server_ctx(cert, key, NULL);
    iop_tls_ctx *trust_ec = client_ctx(c.ec_cert, 0), *trust_rsa = client_ctx(c.rsa_cert, 0);
    iop_tls *old_srv, *old_cli, *srv, *cli;
    CHECK_OK(iop_tls_new(sctx, NULL, &old_srv));
    CHECK_OK(iop_tls_new(trust_ec, "localhost", &old_cli));
    CHECK_EQ(pair_handshake(old_cli, old_srv, NULL), 1);

    /* A bad new pair (RSA cert, EC key): the old one stays. */
    sh("cp %s %s", c.rsa_cert, cert);
    struct iop_tls_error err = {{0}};
    CHECK_EQ(iop_tls_ctx_reload(sctx, &err), -EINVAL);
    CHECK(strstr(err.msg, "does not match"));
    CHECK_OK(iop_tls_new(sctx, NULL, &srv));
    CHECK_OK(iop_tls_new(trust_ec, "localhost", &cli));
    CHECK_EQ(pair_handshake(cli, srv, NULL), 1);
    iop_tls_free(srv);
    iop_tls_free(cli);

    /* A good one: new handshakes see it, the established one goes on. */
    sh("cp %s %s", c.rsa_key, key);
    CHECK_OK(iop_tls_ctx_reload(sctx, &err));
    CHECK_OK(iop_tls_new(sctx, NULL, &srv));
    CHECK_OK(iop_tls_new(trust_rsa, "localhost", &cli));
    CHECK_EQ(pair_handshake(cli, srv, NULL), 1);
    iop_tls_free(srv);
    iop_tls_free(cli);
    send_text(old_cli, old_srv, "still here");
    send_text(old_srv, old_cli, "yes");
    iop_tls_ctx_free(sctx); /* transports outlive their context */
    send_text(old_cli, old_srv, "after free");
    iop_tls_free(old_srv);
    iop_tls_free(old_cli);
    iop_tls_ctx_free(trust_ec);
    iop_tls_ctx_free(trust_rsa);
    drop_certs(&c);
}

IOP_TEST(tls_ktls_probe, be)
{
    (void)be;
    /* Whatever the kernel says, the probe and a context agree with it. */
    FILE *f = fopen("/proc/sys/net/ipv4/tcp_available_ulp", "r");
    char line[256] = "";
    if (f) {
        if (!fgets(line, sizeof line, f))
            line[0] = '\0';
        fclose(f);
    }
    int kernel = strstr(line, "tls") != NULL;
    CHECK(iop_tls_ktls_available() <= kernel);
    struct certs c;
    make_certs(&c, 0);
    iop_tls_ctx *sctx = server_ctx(c.ec_cert, c.ec_key, NULL);
    CHECK_EQ(iop_tls_ctx_ktls(sctx), iop_tls_ktls_available());
    iop_tls_ctx_free(sctx);
    drop_certs(&c);
    if (!kernel)
        IOP_SKIP("the kernel offers no tls ULP here");
}

/* tls_helpers.h - certificates for the TLS tests, made by the openssl
 * command in a fresh temporary directory (none is committed). */
#ifndef IOP_TEST_TLS_HELPERS_H
#define IOP_TEST_TLS_HELPERS_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner.h"

struct certs {
    char dir[64];
    char ec_cert[96], ec_key[96], rsa_cert[96], rsa_key[96], enc_key[96], pw[96], badpw[96];
};

static inline void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    if (system(cmd) != 0)
        iop_test_fail(__FILE__, __LINE__, "command failed: %s", cmd);
}

/* An ECDSA P-256 pair, an RSA pair, the EC key encrypted with a password
 * file, and a wrong password file.  Both certificates are self-signed for
 * localhost and 127.0.0.1, so each is also its own CA. */
static inline void make_certs(struct certs *c, int rsa)
{
    strcpy(c->dir, "/tmp/iop-tls-XXXXXX");
    CHECK(mkdtemp(c->dir));
    snprintf(c->ec_cert, sizeof c->ec_cert, "%s/ec.crt", c->dir);
    snprintf(c->ec_key, sizeof c->ec_key, "%s/ec.key", c->dir);
    snprintf(c->rsa_cert, sizeof c->rsa_cert, "%s/rsa.crt", c->dir);
    snprintf(c->rsa_key, sizeof c->rsa_key, "%s/rsa.key", c->dir);
    snprintf(c->enc_key, sizeof c->enc_key, "%s/enc.key", c->dir);
    snprintf(c->pw, sizeof c->pw, "%s/pw", c->dir);
    snprintf(c->badpw, sizeof c->badpw, "%s/badpw", c->dir);
    const char *req = "openssl req -x509 -nodes -days 2 -subj /CN=localhost "
                      "-addext subjectAltName=DNS:localhost,IP:127.0.0.1";
    sh("%s -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -keyout %s -out %s 2>/dev/null", req,
       c->ec_key, c->ec_cert);
    if (rsa)
        sh("%s -newkey rsa:2048 -keyout %s -out %s 2>/dev/null", req, c->rsa_key, c->rsa_cert);
    sh("printf 'sesame\\n' > %s && printf 'wrong\\n' > %s", c->pw, c->badpw);
    sh("openssl pkey -in %s -aes256 -passout pass:sesame -out %s", c->ec_key, c->enc_key);
}

static inline void drop_certs(struct certs *c)
{
    sh("rm -rf %s", c->dir);
}

#endif

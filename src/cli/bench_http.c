/* bench_http.c - `ioplex bench http`: load an HTTP/1.1 server with GET
 * requests over keep-alive connections, --pipeline P of them in flight per
 * connection.
 *
 * Responses are read by a small incremental parser: the status line, the
 * headers it needs (Content-Length, Transfer-Encoding, Connection), then
 * the body, whose length is checked: by Content-Length, by the chunked
 * framing, or up to the close when there is neither.  A line cut between
 * two reads is gathered in a per-connection buffer; everything else is read
 * where it lies.
 *
 * A connection the server closes between responses (Connection: close, an
 * HTTP/1.0 answer, a keep-alive limit) is opened again and counted; the
 * requests it had in flight are sent again on the new one, their latency
 * still running from the first send.  A close inside a response, or a
 * response we cannot read, is an error; the connection is then opened
 * again too, its requests given up.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/bench_common.h"
#include "cli/cli.h"
#include "cli/opt.h"

#define PROG         "ioplex bench http"
#define MAX_PIPELINE 1024
#define MAX_LINE     16384 /* a status, header or chunk-size line */
#define NSTATUS      1000  /* three digits */

enum hstate {
    HS_STATUS,     /* the status line */
    HS_HEADER,     /* header lines until the empty one */
    HS_BODY,       /* left bytes of a Content-Length body */
    HS_CHUNK_SIZE, /* a chunk-size line */
    HS_CHUNK_DATA, /* left bytes of a chunk */
    HS_CHUNK_END,  /* the CRLF after a chunk */
    HS_TRAILER,    /* trailer lines until the empty one */
    HS_TO_EOF,     /* neither length nor chunks: the body ends with the connection */
};

struct http_conf {
    char *req; /* the request, sent as is */
    size_t reqlen;
    unsigned pipeline;
    const char *path, *host;
};

struct hconn {
    struct bconn b;   /* first: the common part */
    uint64_t *starts; /* ring of b.cap start times, oldest at head */
    unsigned head, n;
    unsigned unsent; /* after a reopen: requests of the ring to send again */
    uint8_t state;   /* enum hstate */
    uint8_t close;   /* the server will close after this response */
    uint8_t keep;    /* "Connection: keep-alive" (HTTP/1.0) */
    uint8_t chunked, has_len;
    uint8_t minor; /* HTTP/1.minor */
    int status;
    uint64_t left;      /* body or chunk bytes still to come */
    uint64_t bytes;     /* of this response so far */
    uint64_t responses; /* on this connection */
    char *line;         /* a line cut between reads */
    size_t llen;
};

struct hthread {
    uint64_t *starts; /* every connection's ring */
    uint64_t status[NSTATUS];
};

/* ---- requests ------------------------------------------------------------------ */

static void ring_push(struct hconn *c, uint64_t start)
{
    c->starts[(c->head + c->n++) % c->b.cap] = start;
}

static uint64_t ring_pop(struct hconn *c)
{
    uint64_t v = c->starts[c->head];
    c->head = (c->head + 1) % c->b.cap;
    c->n--;
    return v;
}

static void parser_reset(struct hconn *c)
{
    c->state = HS_STATUS;
    c->close = c->keep = c->chunked = c->has_len = 0;
    c->status = 0;
    c->left = c->bytes = 0;
    free(c->line);
    c->line = NULL;
    c->llen = 0;
}

static void conn_error(struct hconn *c, int kind);

static void write_request(struct hconn *c)
{
    const struct http_conf *h = c->b.t->run->pconf;
    if (iop_stream_write(c->b.s, h->req, h->reqlen) < 0)
        conn_error(c, BE_CLOSED);
}

static void http_send(struct bconn *b, uint64_t start)
{
    struct hconn *c = (struct hconn *)b;
    ring_push(c, start);
    write_request(c);
}

/* Open the connection again: the requests in flight go out again on it
 * (unless they were given up). */
static void reopen(struct hconn *c)
{
    bench_close(&c->b);
    parser_reset(c);
    c->responses = 0;
    c->unsent = c->n;
    if (c->b.t->stopping && !c->n)
        return; /* nothing owed, and no more requests: stay closed */
    bench_reopen(&c->b);
}

/* An error: count it, give up the requests in flight, start afresh. */
static void conn_error(struct hconn *c, int kind)
{
    bench_error(c->b.t, kind);
    c->head = c->n = 0;
    bench_drop(&c->b);
    reopen(c);
}

static void http_open(struct bconn *b)
{
    struct hconn *c = (struct hconn *)b;
    bench_ready(b);
    while (c->unsent && b->state == BC_OPEN) {
        c->unsent--;
        write_request(c);
    }
    bench_pump(b);
}

/* ---- responses ----------------------------------------------------------------- */

/* A whole response: 1 if the connection carries on, 0 if it was closed. */
static int response_done(struct hconn *c)
{
    struct hthread *ht = c->b.t->pdata;
    int closing = c->close || (c->minor == 0 && !c->keep);
    ht->status[c->status]++;
    c->responses++;
    bench_done(&c->b, ring_pop(c), c->bytes);
    parser_reset(c);
    if (closing) {
        reopen(c);
        return 0;
    }
    bench_pump(&c->b);
    return 1;
}

/* Case-insensitive: does the comma-separated list v (n bytes) hold token? */
static int has_token(const char *v, size_t n, const char *token)
{
    size_t tl = strlen(token);
    for (size_t i = 0; i + tl <= n; i++)
        if (!strncasecmp(v + i, token, tl) && (i == 0 || v[i - 1] == ',' || v[i - 1] == ' ') &&
            (i + tl == n || v[i + tl] == ',' || v[i + tl] == ' ' || v[i + tl] == ';'))
            return 1;
    return 0;
}

/* Strict decimal (Content-Length) or hex (chunk size, up to ';'). */
static int parse_uint(const char *s, size_t n, int base, uint64_t *out)
{
    uint64_t v = 0;
    size_t i = 0;
    for (; i < n && isxdigit((unsigned char)s[i]); i++) {
        int d =
            isdigit((unsigned char)s[i]) ? s[i] - '0' : (tolower((unsigned char)s[i]) - 'a' + 10);
        if (d >= base || v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base)
            return -1;
        v = v * (uint64_t)base + (uint64_t)d;
    }
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    if (i == 0 || (i < n && !(base == 16 && s[i] == ';')))
        return -1;
    *out = v;
    return 0;
}

/* "HTTP/1.x SSS reason" */
static int status_line(struct hconn *c, const char *s, size_t n)
{
    if (n < 12 || memcmp(s, "HTTP/1.", 7) || !isdigit((unsigned char)s[7]) || s[8] != ' ' ||
        !isdigit((unsigned char)s[9]) || !isdigit((unsigned char)s[10]) ||
        !isdigit((unsigned char)s[11]) || (n > 12 && s[12] != ' ') || s[9] == '0')
        return BE_BAD_REPLY;
    if (!c->n)
        return BE_BAD_REPLY; /* an answer to nothing asked */
    c->minor = (uint8_t)(s[7] - '0');
    c->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    c->state = HS_HEADER;
    return 0;
}

static int header_line(struct hconn *c, const char *s, size_t n)
{
    const char *colon = memchr(s, ':', n);
    if (s[0] == ' ' || s[0] == '\t')
        return 0; /* an obsolete folded line: nothing we read */
    if (!colon || colon == s)
        return BE_BAD_REPLY;
    size_t nl = (size_t)(colon - s);
    const char *v = colon + 1;
    size_t vl = n - nl - 1;
    while (vl && (*v == ' ' || *v == '\t'))
        v++, vl--;
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
        vl--;
    if (nl == 14 && !strncasecmp(s, "content-length", nl)) {
        uint64_t len;
        if (parse_uint(v, vl, 10, &len) < 0 || (c->has_len && len != c->left))
            return BE_BAD_REPLY;
        c->left = len;
        c->has_len = 1;
    } else if (nl == 17 && !strncasecmp(s, "transfer-encoding", nl)) {
        if (vl < 7 || strncasecmp(v + vl - 7, "chunked", 7))
            return BE_UNSUPPORTED; /* gzip alone or the like: no framing we read */
        c->chunked = 1;
    } else if (nl == 10 && !strncasecmp(s, "connection", nl)) {
        c->close |= has_token(v, vl, "close");
        c->keep |= has_token(v, vl, "keep-alive");
    }
    return 0;
}

/* The empty line after the headers: where the body's end lies. */
static int headers_end(struct hconn *c)
{
    if (c->status < 200) {
        if (c->status == 101)
            return BE_UNSUPPORTED;
        parser_reset(c); /* 1xx: an interim answer, the real one follows */
        return 0;
    }
    if (c->status == 204 || c->status == 304)
        return response_done(c) ? 0 : -1;
    if (c->chunked) {
        c->state = HS_CHUNK_SIZE;
    } else if (c->has_len) {
        if (!c->left)
            return response_done(c) ? 0 : -1;
        c->state = HS_BODY;
    } else {
        c->state = HS_TO_EOF;
        c->close = 1;
    }
    return 0;
}

/* One line (CRLF or LF stripped).  0 to go on, -1 when the connection was
 * closed (after a response), or an error kind. */
static int on_line(struct hconn *c, const char *s, size_t n)
{
    switch (c->state) {
    case HS_STATUS: /* an empty line before it is to be ignored (RFC 9112 2.2) */
        return n ? status_line(c, s, n) : 0;
    case HS_HEADER:
        return n ? header_line(c, s, n) : headers_end(c);
    case HS_CHUNK_SIZE:
        if (parse_uint(s, n, 16, &c->left) < 0)
            return BE_BAD_REPLY;
        c->state = c->left ? HS_CHUNK_DATA : HS_TRAILER;
        return 0;
    case HS_CHUNK_END:
        c->state = HS_CHUNK_SIZE;
        return n ? BE_BAD_REPLY : 0;
    case HS_TRAILER:
        return n ? 0 : response_done(c) ? 0 : -1;
    }
    return BE_BAD_REPLY;
}

/* The next line out of buf[0..n): returns the bytes used (all of them
 * when the line is not complete yet: they wait in c->line), or -1 when the
 * connection was closed or on an error (then set in *err). */
static long take_line(struct hconn *c, const char *buf, size_t n, int *err)
{
    const char *nl = memchr(buf, '\n', n);
    size_t take = nl ? (size_t)(nl - buf) + 1 : n;
    c->bytes += take;
    if (c->line || !nl) {
        char *p = c->llen + take > MAX_LINE ? NULL : realloc(c->line, c->llen + take);
        if (!p) {
            *err = BE_BAD_REPLY;
            return -1;
        }
        memcpy(p + c->llen, buf, take);
        c->line = p;
        c->llen += take;
        if (!nl)
            return (long)take;
    }
    char *own = c->line; /* on_line may reset the parser: detach it first */
    const char *s = own ? own : buf;
    size_t len = (own ? c->llen : take) - 1;
    c->line = NULL;
    c->llen = 0;
    if (len && s[len - 1] == '\r')
        len--;
    *err = on_line(c, s, len);
    free(own);
    return *err ? -1 : (long)take;
}

/* Body bytes: the bytes used, or -1 when the response completed and the
 * connection was closed. */
static long take_body(struct hconn *c, size_t n, int *err)
{
    size_t take = c->state == HS_TO_EOF || n < c->left ? n : (size_t)c->left;
    c->bytes += take;
    if (c->state == HS_TO_EOF)
        return (long)take;
    c->left -= take;
    if (c->left)
        return (long)take;
    if (c->state == HS_CHUNK_DATA) {
        c->state = HS_CHUNK_END;
        return (long)take;
    }
    if (!response_done(c)) {
        *err = -1;
        return -1;
    }
    return (long)take;
}

/* Everything that arrived; stops when the connection is closed. */
static void feed(struct hconn *c, const char *buf, size_t n)
{
    while (n) {
        int err = 0;
        int body = c->state == HS_BODY || c->state == HS_CHUNK_DATA || c->state == HS_TO_EOF;
        long used = body ? take_body(c, n, &err) : take_line(c, buf, n, &err);
        if (used < 0) {
            if (err > 0)
                conn_error(c, err);
            return;
        }
        buf += used;
        n -= (size_t)used;
    }
}

/* The server closed (n == 0) or reset (n < 0) the connection. */
static void at_close(struct hconn *c, ssize_t n)
{
    if (c->state == HS_TO_EOF && n == 0) {
        response_done(c); /* the close ends the body; c->close reopens */
        return;
    }
    if (c->state >= HS_BODY)
        conn_error(c, BE_SHORT_BODY);
    else if (c->state != HS_STATUS || c->line || (c->n && !c->responses))
        conn_error(c, BE_CLOSED); /* inside a response, or before answering anything */
    else
        reopen(c); /* between responses: what was in flight goes out again */
}

static void http_read(iop_stream *s, ssize_t n, const char *buf)
{
    struct hconn *c = iop_stream_data(s);
    if (n > 0 && !c->b.idle) {
        feed(c, buf, (size_t)n);
    } else if (n > 0) {
        conn_error(c, BE_IDLE); /* nothing was asked */
    } else {
        at_close(c, n);
    }
}

/* ---- threads and the report ---------------------------------------------------- */

static int http_thread_init(struct bench_thread *t)
{
    const struct http_conf *h = t->run->pconf;
    struct hthread *ht = calloc(1, sizeof *ht);
    uint64_t *starts = calloc(t->nconns ? t->nconns * h->pipeline : 1, sizeof *starts);
    if (!ht || !starts) {
        free(ht);
        free(starts);
        return -ENOMEM;
    }
    ht->starts = starts;
    for (size_t i = 0; i < t->nconns; i++)
        ((struct hconn *)bench_conn(t, i))->starts = starts + i * h->pipeline;
    t->pdata = ht;
    return 0;
}

static void http_thread_fini(struct bench_thread *t)
{
    struct hthread *ht = t->pdata;
    for (size_t i = 0; i < t->nconns; i++)
        free(((struct hconn *)bench_conn(t, i))->line);
    if (ht)
        free(ht->starts); /* ht itself holds the counts for the report */
}

/* v with thousands separators */
static const char *grp_u64(char *buf, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v), o = 0;
    for (int i = 0; i < n; i++) {
        if (i && (n - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = tmp[i];
    }
    buf[o] = '\0';
    return buf;
}

static void http_report(const struct bench_run *r, int json, FILE *f)
{
    uint64_t st[NSTATUS];
    uint64_t reopened = 0, other = 0;
    const struct http_conf *h = r->pconf;
    char b[32];
    memset(st, 0, sizeof st);
    for (int i = 0; i < r->nthreads; i++) {
        const struct hthread *ht = r->th[i].pdata;
        for (int k = 0; ht && k < NSTATUS; k++)
            st[k] += ht->status[k];
        reopened += r->th[i].reopened;
    }
    fputs(json ? ",\"status\":{" : "  status   ", f);
    for (int k = 0, n = 0; k < NSTATUS; k++) {
        if (!st[k])
            continue;
        other += k < 200 || k >= 400 ? st[k] : 0;
        if (json)
            fprintf(f, "%s\"%d\":%llu", n ? "," : "", k, (unsigned long long)st[k]);
        else
            fprintf(f, " %d: %s", k, grp_u64(b, st[k]));
        n++;
    }
    if (json)
        fprintf(f, "},\"non_2xx_3xx\":%llu,\"reopened\":%llu,\"pipeline\":%u",
                (unsigned long long)other, (unsigned long long)reopened, h->pipeline);
    else
        fprintf(f, "%s\n  reopened  %llu\n", other ? "   (not 2xx/3xx!)" : "",
                (unsigned long long)reopened);
}

static const struct bench_proto http_proto = {
    .name = "http",
    .unit = "requests",
    .per = "req",
    .conn_size = sizeof(struct hconn),
    .on_read = http_read,
    .thread_init = http_thread_init,
    .thread_fini = http_thread_fini,
    .on_open = http_open,
    .send = http_send,
    .report = http_report,
};

/* ---- the command ------------------------------------------------------------ */

static void usage(void)
{
    fputs("usage: ioplex bench http URL [options]\n"
          "\n"
          "Load an HTTP/1.1 server with GET URL over keep-alive connections.  Reports\n"
          "req/s, MB/s received, latency percentiles (p50, p90, p99, p99.9, max),\n"
          "the count of each status code, and errors.  Every body is checked against\n"
          "its Content-Length (or chunked framing); a connection the server closes\n"
          "between responses is opened again and counted (\"reopened\").  Status\n"
          "counts cover every response, warm-up included; codes other than 2xx and\n"
          "3xx are reported, not counted as errors.\n"
          "URL: http[s]://HOST[:PORT][/PATH[?QUERY]].\n"
          "\n"
          "HTTP options:\n"
          "  -p, --pipeline P       requests in flight per connection [1]\n"
          "\n",
          stdout);
    bench_opts_usage(stdout);
}

static int bad_url(const char *url, const char *why)
{
    fprintf(stderr, "%s: bad URL '%s': %s\n", PROG, url, why);
    return -1;
}

/* The authority of url (after "http://"): host as written, port. */
static const char *authority(const char *url, const char *p, size_t *hostlen, long *port,
                             const char **why)
{
    const char *host = p;
    if (*p == '[') {
        const char *end = strchr(p, ']');
        p = end ? end + 1 : p + strlen(p);
        *why = end ? NULL : "unbalanced '['";
    } else {
        p += strcspn(p, ":/?#@");
    }
    *hostlen = (size_t)(p - host);
    *port = 80;
    if (!*why && *p == '@')
        *why = "user info is not supported";
    if (!*why && !*hostlen)
        *why = "no host";
    if (!*why && *p == ':') {
        size_t dl = strspn(p + 1, "0123456789");
        char digits[8];
        if (dl == 0 || dl > 5 || (p[1 + dl] && !strchr("/?#", p[1 + dl])))
            *why = "bad port";
        snprintf(digits, sizeof digits, "%.*s", (int)(dl < 6 ? dl : 5), p + 1);
        if (!*why && (opt_int(digits, 1, 65535, port) < 0))
            *why = "port out of range";
        p += 1 + dl;
    }
    (void)url;
    return p;
}

/* Split url, resolve its host, and write the request. */
static int parse_url(const char *url, struct bench_opts *o, struct http_conf *h, iop_addr *addr)
{
    const char *why = NULL;
    int tls = !strncasecmp(url, "https://", 8);
    if (!tls && strncasecmp(url, "http://", 7))
        return bad_url(url, "not an http:// or https:// URL");
    size_t hostlen, skip = tls ? 8 : 7;
    long port;
    const char *p = authority(url, url + skip, &hostlen, &port, &why);
    if (why)
        return bad_url(url, why);
    const char *host = url + skip, *path = p;
    if (tls) {
        o->tls = 1;
        o->alpn = "http/1.1";
        if (p == host + hostlen) /* no port given */
            port = 443;
        int br = host[0] == '[';
        snprintf(o->tls_name, sizeof o->tls_name, "%.*s", (int)hostlen - 2 * br, host + br);
    }
    size_t pathlen = strcspn(path, "#");
    for (size_t i = 0; i < pathlen; i++)
        if ((unsigned char)path[i] <= 0x20 || path[i] == 0x7f)
            return bad_url(url, "a space or control character in the path");
    char text[320];
    snprintf(text, sizeof text, "%.*s:%ld", (int)hostlen, host, port);
    int rc = hostlen < 256 ? iop_addr_parse(text, addr) : -ENAMETOOLONG;
    if (rc < 0 || addr->kind != IOP_ADDR_TCP)
        return bad_url(url, rc < 0 ? iop_strerror(rc) : "not a TCP address");
    size_t cap = pathlen + hostlen + 64;
    h->req = malloc(cap);
    if (!h->req)
        return bad_url(url, "out of memory");
    int n = snprintf(h->req, cap, "GET %s%.*s HTTP/1.1\r\nHost: %.*s%.*s\r\n\r\n",
                     *path == '/' ? "" : "/", (int)pathlen, path, (int)hostlen, host,
                     (int)(p - host - (long)hostlen), host + hostlen);
    h->reqlen = (size_t)n;
    return 0;
}

/* 0: run; 1: help printed; -1: bad command line (one line printed). */
static int parse(int argc, char **argv, struct bench_opts *o, long *pipeline)
{
    struct opt tab[BENCH_NOPTS + 2];
    bench_opts_init(o);
    *pipeline = 1;
    size_t k = bench_opts_table(o, tab);
    tab[k++] = (struct opt){"pipeline", 'p', OPT_INT, pipeline, 1, MAX_PIPELINE, NULL};
    tab[k] = (struct opt){NULL, 0, OPT_FLAG, NULL, 0, 0, NULL};
    int npos = opt_parse(PROG, tab, argc, argv);
    if (npos < 0)
        return -1;
    if (o->help) {
        usage();
        return 1;
    }
    return bench_opts_check(PROG, "URL", o, npos, argv);
}

int cmd_bench_http(int argc, char **argv)
{
    struct bench_opts o;
    struct http_conf h;
    iop_addr addr;
    long pipeline;
    int rc = parse(argc, argv, &o, &pipeline);
    if (rc != 0)
        return rc > 0 ? CLI_OK : CLI_USAGE;
    memset(&h, 0, sizeof h);
    h.pipeline = (unsigned)pipeline;
    if (parse_url(o.target, &o, &h, &addr) < 0)
        return CLI_USAGE;
    struct bench_proto proto = http_proto;
    proto.cap = h.pipeline;
    char what[64];
    snprintf(what, sizeof what, "GET, pipeline %u", h.pipeline);
    rc = bench_run(PROG, &o, &proto, &h, &addr, what);
    free(h.req);
    return rc;
}

/* bench_echo.c - `ioplex bench echo`: load an echo server and check every
 * byte it sends back.
 *
 * A message is SIZE bytes on the wire in each mode: raw bytes, a line
 * (SIZE-1 bytes and '\n') or a frame (a 4-byte big-endian length, then
 * SIZE-4 bytes).  Its content is a window into a pseudo-random pattern that
 * starts somewhere else for every message of every connection, so an echo
 * that is stale, shifted, truncated or another connection's does not match.
 * The echo of each mode is the message itself, so one comparison serves all
 * three; it runs over each piece as it arrives (a reply may come in parts).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "cli/bench_common.h"
#include "cli/cli.h"
#include "cli/opt.h"

#define PROG     "ioplex bench echo"
#define MAX_SIZE (16L << 20)
#define SPREAD   251 /* message starts in the pattern: a prime, so they cycle late */

enum { MODE_RAW, MODE_LINES, MODE_FRAMED };

struct echo_conf {
    int mode;
    size_t size;       /* wire bytes per message */
    size_t hlen, blen; /* the length prefix, the body from the pattern ... */
    size_t tlen;       /* ... and the '\n' of a line */
    unsigned char head[4];
    unsigned char *pat; /* size + SPREAD bytes; printable for lines */
};

struct econn {
    struct bconn b; /* first: the common part */
    uint64_t start;
    uint64_t seq; /* messages sent on this connection */
    size_t got;   /* bytes of the reply so far */
    uint32_t off; /* the body's start in the pattern */
    uint8_t ping; /* idle: the message that proves it live is out */
};

static const unsigned char newline[1] = {'\n'};

static void echo_send(struct bconn *b, uint64_t start)
{
    struct econn *c = (struct econn *)b;
    const struct echo_conf *e = b->t->run->pconf;
    struct iovec iov[3];
    int n = 0;
    c->start = start;
    c->got = 0;
    c->off = (uint32_t)((b->id * 167u + c->seq++ * 59u) % SPREAD);
    if (e->hlen)
        iov[n++] = (struct iovec){(void *)e->head, e->hlen};
    iov[n++] = (struct iovec){e->pat + c->off, e->blen};
    if (e->tlen)
        iov[n++] = (struct iovec){(void *)newline, 1};
    if (iop_stream_writev(b->s, iov, n) < 0)
        bench_fail(b, BE_CLOSED);
}

/* Do n bytes that came at reply position c->got match what was sent?  The
 * message is three pieces: head, body (from the pattern), tail. */
static int matches(const struct echo_conf *e, const struct econn *c, const char *buf, size_t n)
{
    size_t pos = c->got;
    while (n) {
        const unsigned char *want;
        size_t avail;
        if (pos < e->hlen) {
            want = e->head + pos;
            avail = e->hlen - pos;
        } else if (pos < e->hlen + e->blen) {
            want = e->pat + c->off + (pos - e->hlen);
            avail = e->hlen + e->blen - pos;
        } else {
            want = newline;
            avail = e->size - pos;
        }
        size_t k = n < avail ? n : avail;
        if (memcmp(buf, want, k) != 0)
            return 0;
        buf += k;
        n -= k;
        pos += k;
    }
    return 1;
}

static void echo_read(iop_stream *s, ssize_t n, const char *buf)
{
    struct econn *c = iop_stream_data(s);
    struct bconn *b = &c->b;
    const struct echo_conf *e = b->t->run->pconf;
    int owed = b->idle ? c->ping : b->inflight > 0;
    if (n <= 0) { /* an echo server never closes first */
        bench_fail(b, b->idle && !c->ping ? BE_IDLE : BE_CLOSED);
        return;
    }
    if (!owed || c->got + (size_t)n > e->size) {
        bench_fail(b, b->idle && !c->ping ? BE_IDLE : BE_EXTRA);
        return;
    }
    if (!matches(e, c, buf, (size_t)n)) {
        bench_fail(b, BE_MISMATCH);
        return;
    }
    c->got += (size_t)n;
    if (c->got < e->size)
        return;
    if (b->idle) {
        c->ping = 0;
        bench_ready(b);
        return;
    }
    bench_done(b, c->start, e->size);
    bench_pump(b);
}

/* Active connections are ready at once; idle ones echo one message first,
 * so that a server that accepted but never serves them is caught. */
static void echo_open(struct bconn *b)
{
    struct econn *c = (struct econn *)b;
    if (!b->idle) {
        bench_ready(b);
        return;
    }
    c->ping = 1;
    echo_send(b, 0);
}

static void echo_report(const struct bench_run *r, int json, FILE *f)
{
    static const char *const names[] = {"raw", "lines", "framed"};
    const struct echo_conf *e = r->pconf;
    if (json)
        fprintf(f, ",\"mode\":\"%s\",\"size\":%zu", names[e->mode], e->size);
}

static const struct bench_proto echo_proto = {
    .name = "echo",
    .unit = "msgs",
    .per = "msg",
    .conn_size = sizeof(struct econn),
    .cap = 1,
    .on_read = echo_read,
    .on_open = echo_open,
    .send = echo_send,
    .report = echo_report,
};

/* ---- the command ------------------------------------------------------------ */

static void usage(void)
{
    fputs("usage: ioplex bench echo ADDR [options]\n"
          "\n"
          "Load an echo server: each connection sends a SIZE-byte message, waits for\n"
          "all of it to come back, checks every byte, and sends the next.  Every\n"
          "message has its own content, so a stale, shifted or cross-connection echo\n"
          "is caught.  Reports msgs/s, MB/s (one way), latency percentiles (p50, p90,\n"
          "p99, p99.9, max) and errors.  Idle connections (--idle) each echo one\n"
          "message first, to prove they are served, and must then stay open and\n"
          "silent.  ADDR: HOST:PORT, [V6]:PORT or unix:PATH.\n"
          "\n"
          "Echo options:\n"
          "  -s, --size BYTES       bytes per message on the wire [64]\n"
          "      --lines            a message is a line: SIZE-1 bytes, then '\\n'\n"
          "      --framed           a message is a frame: a 4-byte big-endian length,\n"
          "                         then SIZE-4 bytes (SIZE >= 4)\n"
          "\n",
          stdout);
    bench_opts_usage(stdout);
}

struct echo_opts {
    long size;
    int lines, framed;
};

/* The pattern messages are cut from; lines avoid '\n' (printable only). */
static unsigned char *make_pattern(size_t len, int printable)
{
    unsigned char *p = malloc(len);
    uint32_t x = 2463534242u;
    for (size_t i = 0; p && i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = printable ? (unsigned char)('!' + (x >> 8) % 94) : (unsigned char)(x >> 8);
    }
    return p;
}

static int echo_conf(const struct echo_opts *eo, struct echo_conf *e)
{
    memset(e, 0, sizeof *e);
    e->mode = eo->lines ? MODE_LINES : eo->framed ? MODE_FRAMED : MODE_RAW;
    e->size = (size_t)eo->size;
    e->blen = e->size;
    if (e->mode == MODE_LINES) {
        e->tlen = 1;
        e->blen--;
    } else if (e->mode == MODE_FRAMED) {
        e->hlen = 4;
        e->blen -= 4;
        uint32_t len = (uint32_t)e->blen;
        e->head[0] = (unsigned char)(len >> 24);
        e->head[1] = (unsigned char)(len >> 16);
        e->head[2] = (unsigned char)(len >> 8);
        e->head[3] = (unsigned char)len;
    }
    e->pat = make_pattern(e->blen + SPREAD, e->mode == MODE_LINES);
    return e->pat ? 0 : -1;
}

/* The target: a TCP or Unix stream address. */
static int parse_addr(const char *text, iop_addr *a)
{
    int rc = iop_addr_parse(text, a);
    const char *why = rc < 0 ? iop_strerror(rc) : NULL;
    if (!why && a->kind == IOP_ADDR_UDP)
        why = "UDP is not supported (stream connections only)";
    else if (!why && a->kind == IOP_ADDR_TCP &&
             (a->u.sa.sa_family == AF_INET ? a->u.in4.sin_port : a->u.in6.sin6_port) == 0)
        why = "port 0";
    if (why)
        fprintf(stderr, "%s: bad address '%s': %s\n", PROG, text, why);
    return why ? -1 : 0;
}

/* 0: run; 1: help printed; -1: bad command line (one line printed). */
static int parse(int argc, char **argv, struct bench_opts *o, struct echo_opts *eo)
{
    struct opt tab[BENCH_NOPTS + 4];
    bench_opts_init(o);
    memset(eo, 0, sizeof *eo);
    eo->size = 64;
    size_t k = bench_opts_table(o, tab);
    tab[k++] = (struct opt){"size", 's', OPT_INT, &eo->size, 1, MAX_SIZE, NULL};
    tab[k++] = (struct opt){"lines", 0, OPT_FLAG, &eo->lines, 0, 0, NULL};
    tab[k++] = (struct opt){"framed", 0, OPT_FLAG, &eo->framed, 0, 0, NULL};
    tab[k] = (struct opt){NULL, 0, OPT_FLAG, NULL, 0, 0, NULL};
    int npos = opt_parse(PROG, tab, argc, argv);
    if (npos < 0)
        return -1;
    if (o->help) {
        usage();
        return 1;
    }
    if (bench_opts_check(PROG, "ADDR", o, npos, argv) < 0)
        return -1;
    const char *why = NULL;
    if (eo->lines && eo->framed)
        why = "--lines and --framed exclude each other";
    else if (eo->framed && eo->size < 4)
        why = "--framed needs --size 4 or more (the length prefix is 4 bytes)";
    if (why)
        fprintf(stderr, "%s: %s\n", PROG, why);
    return why ? -1 : 0;
}

int cmd_bench_echo(int argc, char **argv)
{
    struct bench_opts o;
    struct echo_opts eo;
    struct echo_conf e;
    iop_addr addr;
    int rc = parse(argc, argv, &o, &eo);
    if (rc != 0)
        return rc > 0 ? CLI_OK : CLI_USAGE;
    if (parse_addr(o.target, &addr) < 0)
        return CLI_USAGE;
    if (o.tls && addr.kind == IOP_ADDR_TCP) { /* the host checked: "[::1]:9" -> "::1" */
        const char *t = o.target + (o.target[0] == '[');
        size_t n = strcspn(t, "]");
        if (t == o.target)
            n = (size_t)(strrchr(t, ':') - t);
        snprintf(o.tls_name, sizeof o.tls_name, "%.*s", (int)n, t);
    }
    if (echo_conf(&eo, &e) < 0) {
        fprintf(stderr, "%s: out of memory\n", PROG);
        return CLI_FAIL;
    }
    char what[96];
    static const char *const names[] = {"raw", "lines", "framed"};
    snprintf(what, sizeof what, "%s, %zu-byte messages", names[e.mode], e.size);
    rc = bench_run(PROG, &o, &echo_proto, &e, &addr, what);
    free(e.pat);
    return rc;
}

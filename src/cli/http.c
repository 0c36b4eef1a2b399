/* http.c - `ioplex http [DIR]`: the static file server (src/proto/http*.c)
 * served with the common server options (serve.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/opt.h"
#include "cli/serve.h"
#include "ioplex/proto.h"

#define PROG     "ioplex http"
#define NHTTP    10 /* http's own option entries */
#define MAX_HDRS 64 /* --header lines */

static const struct serve_defaults defaults = {"127.0.0.1:8000", "60", 1};

struct http_opts {
    int no_listing;
    long max_header; /* 0: not given */
    const char *header_timeout;
    int cors;
    const char *headers[MAX_HDRS];
    size_t nheaders;
    const char *cache_control, *content_type;
    int compress;
    size_t compress_max, compress_memory; /* 0: not given */
};

static void usage(void)
{
    fputs("usage: ioplex http [DIR] [options]\n"
          "\n"
          "Serve the files under DIR (default: the current directory) over HTTP/1.1:\n"
          "GET and HEAD, directory listings, ranges, conditional requests, keep-alive\n"
          "and pipelining.  Nothing outside DIR is ever served, through '..', encoded\n"
          "separators or symlinks.  One Common Log Format line per request on stderr.\n"
          "\n"
          "HTTP options:\n"
          "      --no-listing         a directory without index.html is 403, not a listing\n"
          "      --max-header BYTES   request line + headers at most [8192]: 431\n"
          "                           (414 when the request line alone is longer)\n"
          "      --header-timeout SECS  a request head must arrive within [10]\n"
          "      --cors               Access-Control-Allow-Origin: * on every response;\n"
          "                           OPTIONS (preflight) answered 204\n"
          "      --header 'NAME: VALUE'  add this header to every response (repeatable)\n"
          "      --cache-control VALUE   Cache-Control on files\n"
          "      --content-type TYPE  Content-Type of files with an unknown extension\n"
          "                           [application/octet-stream]\n"
          "      --compress           gzip, zstd or brotli for text, JSON, JavaScript, SVG,\n"
          "                           XML and wasm files, compressed once per version\n"
          "                           of a file and kept in memory (when >= 10 % smaller)\n"
          "      --compress-max SIZE  only files up to SIZE bytes (k, M, G suffixes) [1M]\n"
          "      --compress-memory SIZE  memory for compressed copies in all [64M]\n"
          "Files FILE.br, FILE.zst, FILE.gz beside FILE (not older) are sent instead of\n"
          "FILE to clients that accept them, with or without --compress.\n"
          "\n",
          stdout);
    serve_usage(stdout, &defaults);
}

static int add_header(const char *prog, const char *value, void *dest)
{
    struct http_opts *o = dest;
    if (iop_http_header_check(value) < 0) {
        /* The value is not echoed: a CR or LF in it would break the line. */
        fprintf(stderr,
                "%s: --header: want 'Name: value', a token name and no control "
                "characters (CR, LF, ...)\n",
                prog);
        return -1;
    }
    if (o->nheaders == MAX_HDRS) {
        fprintf(stderr, "%s: too many --header options (at most %d)\n", prog, MAX_HDRS);
        return -1;
    }
    o->headers[o->nheaders++] = value;
    return 0;
}

/* A byte count: digits and an optional k, M or G (powers of 1024). */
static int size_opt(const char *prog, const char *value, void *dest)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(value, &end, 10);
    unsigned shift = *end == 'k' || *end == 'K' ? 10 : *end == 'M' ? 20 : *end == 'G' ? 30 : 0;
    if (shift)
        end++;
    if (errno || end == value || *end || value[0] == '-' || v == 0 || v > (1ull << 40) >> shift) {
        fprintf(stderr, "%s: a size from 1 to 1T, such as 65536, 64k or 1M, not '%s'\n", prog,
                value);
        return -1;
    }
    *(size_t *)dest = (size_t)(v << shift);
    return 0;
}

static void http_table(struct http_opts *o, struct opt *tab)
{
    const struct opt own[NHTTP + 1] = {
        {"no-listing", 0, OPT_FLAG, &o->no_listing, 0, 0, NULL},
        {"max-header", 0, OPT_INT, &o->max_header, 256, 1L << 20, NULL},
        {"header-timeout", 0, OPT_STR, &o->header_timeout, 0, 0, NULL},
        {"cors", 0, OPT_FLAG, &o->cors, 0, 0, NULL},
        {"header", 0, OPT_FUNC, o, 0, 0, add_header},
        {"cache-control", 0, OPT_STR, &o->cache_control, 0, 0, NULL},
        {"content-type", 0, OPT_STR, &o->content_type, 0, 0, NULL},
        {"compress", 0, OPT_FLAG, &o->compress, 0, 0, NULL},
        {"compress-max", 0, OPT_FUNC, &o->compress_max, 0, 0, size_opt},
        {"compress-memory", 0, OPT_FUNC, &o->compress_memory, 0, 0, size_opt},
        {NULL, 0, OPT_FLAG, NULL, 0, 0, NULL},
    };
    memcpy(tab, own, sizeof own);
}

static void access_log(void *arg, const char *lines, size_t len)
{
    (void)arg;
    /* One write per batch: lines of concurrent workers never interleave. */
    while (len) {
        ssize_t n = write(STDERR_FILENO, lines, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        lines += n;
        len -= (size_t)n;
    }
}

/* 0: serve; 1: help printed; -1: bad command line (one line printed). */
static int parse(int argc, char **argv, struct serve_opts *so, struct http_opts *o,
                 const char **dir)
{
    struct opt tab[SERVE_NOPTS + NHTTP + 1];
    serve_opts_init(so);
    so->tls_alpn = "http/1.1";
    memset(o, 0, sizeof *o);
    http_table(o, tab + serve_opts_table(so, tab));
    int npos = serve_parse(PROG, tab, argc, argv, so, 1, usage);
    if (npos < 0)
        return npos == SERVE_HELP ? 1 : -1;
    *dir = npos ? argv[0] : ".";
    for (size_t i = 0; i < so->nlisten; i++) {
        if (!strncmp(so->listen[i], "udp:", 4)) {
            fprintf(stderr, "%s: '%s': HTTP needs a stream listener, not udp:\n", PROG,
                    so->listen[i]);
            return -1;
        }
    }
    return 0;
}

static int http_config(const struct http_opts *o, const char *dir, const struct serve_opts *so,
                       struct iop_http_config *hc)
{
    memset(hc, 0, sizeof *hc);
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "%s: '%s': %s\n", PROG, dir,
                errno && stat(dir, &st) < 0 ? strerror(errno) : "not a directory");
        return -1;
    }
    hc->root = dir;
    hc->no_listing = o->no_listing;
    hc->cors = o->cors;
    hc->headers = o->headers;
    hc->nheaders = o->nheaders;
    const char *vals[2][2] = {{"cache-control", o->cache_control},
                              {"content-type", o->content_type}};
    for (int i = 0; i < 2; i++) {
        if (vals[i][1] && iop_http_header_value_check(vals[i][1]) < 0) {
            fprintf(stderr, "%s: --%s: an empty value or a control character\n", PROG, vals[i][0]);
            return -1;
        }
    }
    hc->cache_control = o->cache_control;
    hc->compress = o->compress;
    hc->compress_max = o->compress_max;
    hc->compress_memory = o->compress_memory;
    hc->default_type = o->content_type;
    hc->max_header = (size_t)o->max_header;
    if (o->header_timeout &&
        serve_secs(PROG, "header-timeout", o->header_timeout, &hc->header_timeout_ms) < 0)
        return -1;
    if (o->header_timeout && hc->header_timeout_ms == 0)
        hc->header_timeout_ms = 1;
    if (!so->quiet)
        hc->access_log = access_log;
    return 0;
}

int cmd_http(int argc, char **argv)
{
    struct serve_opts so;
    struct http_opts o;
    const char *dir;
    int rc = parse(argc, argv, &so, &o, &dir);
    if (rc != 0)
        return rc > 0 ? CLI_OK : CLI_USAGE;
    struct iop_server_config cfg;
    struct iop_http_config hc;
    if (serve_config(PROG, &so, &defaults, &cfg) < 0 || http_config(&o, dir, &so, &hc) < 0)
        return CLI_USAGE;
    iop_http *http;
    if ((rc = iop_http_new(&hc, &http)) < 0) {
        fprintf(stderr, "%s: '%s': %s\n", PROG, dir, iop_strerror(rc));
        return CLI_USAGE;
    }
    struct iop_handler h;
    iop_http_handler(http, &h);
    cfg.handler = &h;
    rc = serve_run(PROG, &so, &cfg);
    iop_http_free(http);
    return rc;
}

/* http.c - `ioplex http [DIR]`: the static file server (src/proto/http*.c)
 * served with the common server options (serve.c). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/opt.h"
#include "cli/serve.h"
#include "ioplex/proto.h"

#define PROG  "ioplex http"
#define NHTTP 3 /* http's own option entries */

static const struct serve_defaults defaults = {"127.0.0.1:8000", "60", 1};

struct http_opts {
    int no_listing;
    long max_header; /* 0: not given */
    const char *header_timeout;
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
          "\n",
          stdout);
    serve_usage(stdout, &defaults);
}

static void http_table(struct http_opts *o, struct opt *tab)
{
    const struct opt own[NHTTP + 1] = {
        {"no-listing", 0, OPT_FLAG, &o->no_listing, 0, 0, NULL},
        {"max-header", 0, OPT_INT, &o->max_header, 256, 1L << 20, NULL},
        {"header-timeout", 0, OPT_STR, &o->header_timeout, 0, 0, NULL},
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

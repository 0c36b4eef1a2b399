/* echo.c - `ioplex echo`: the echo protocol (src/proto/echo.c) served with
 * the common server options (serve.c). */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/opt.h"
#include "cli/serve.h"
#include "ioplex/proto.h"

#define PROG      "ioplex echo"
#define MAX_BYTES (1L << 30) /* --max-line, --max-frame */
#define NECHO     7          /* echo's own option entries */

static const struct serve_defaults defaults = {"127.0.0.1:8001", "0", 0};

struct echo_opts {
    int lines, framed, upper;
    long max_line, max_frame; /* 0: not given */
    const char *prefix, *greeting;
};

static void usage(void)
{
    fputs("usage: ioplex echo [options]\n"
          "\n"
          "An echo server: every byte back in order (raw, the default), a reply per\n"
          "line (--lines), or a reply per frame (--framed: a 4-byte big-endian length N,\n"
          "then N bytes).  A udp: listener answers each datagram with one.\n"
          "\n"
          "Echo options:\n"
          "      --lines              a reply per '\\n'-terminated line\n"
          "      --max-line BYTES     a longer line closes the connection [65536]\n"
          "      --framed             a reply frame per whole frame (N = 0 too)\n"
          "      --max-frame BYTES    a larger declared length closes the connection\n"
          "                           and is logged [16777216]\n"
          "      --upper              upper-case the ASCII letters of the payload\n"
          "      --prefix TEXT        TEXT before each reply (--lines, --framed)\n"
          "      --greeting TEXT      sent once on connect (a frame with --framed)\n"
          "\n",
          stdout);
    serve_usage(stdout, &defaults);
}

/* Echo's entries after the common ones, then the terminator. */
static void echo_table(struct echo_opts *e, struct opt *tab)
{
    const struct opt own[NECHO + 1] = {
        {"lines", 0, OPT_FLAG, &e->lines, 0, 0, NULL},
        {"max-line", 0, OPT_INT, &e->max_line, 1, MAX_BYTES, NULL},
        {"framed", 0, OPT_FLAG, &e->framed, 0, 0, NULL},
        {"max-frame", 0, OPT_INT, &e->max_frame, 1, MAX_BYTES, NULL},
        {"upper", 0, OPT_FLAG, &e->upper, 0, 0, NULL},
        {"prefix", 0, OPT_STR, &e->prefix, 0, 0, NULL},
        {"greeting", 0, OPT_STR, &e->greeting, 0, 0, NULL},
        {NULL, 0, OPT_FLAG, NULL, 0, 0, NULL},
    };
    memcpy(tab, own, sizeof own);
}

/* The options that only make sense together.  0, or -1 (one line). */
static int echo_check(const struct echo_opts *e)
{
    const char *why = NULL;
    if (e->lines && e->framed)
        why = "--lines and --framed exclude each other";
    else if (e->prefix && !e->lines && !e->framed)
        why = "--prefix needs --lines or --framed (raw bytes have no message to prefix)";
    else if (e->max_line && !e->lines)
        why = "--max-line needs --lines";
    else if (e->max_frame && !e->framed)
        why = "--max-frame needs --framed";
    if (why)
        fprintf(stderr, "%s: %s\n", PROG, why);
    return why ? -1 : 0;
}

static void echo_config(const struct echo_opts *e, struct iop_echo_config *ec)
{
    memset(ec, 0, sizeof *ec);
    ec->mode = e->lines ? IOP_ECHO_LINES : e->framed ? IOP_ECHO_FRAMED : IOP_ECHO_RAW;
    ec->max_line = (size_t)e->max_line;
    ec->max_frame = (size_t)e->max_frame;
    ec->upper = e->upper;
    ec->prefix = e->prefix && *e->prefix ? e->prefix : NULL;
    ec->greeting = e->greeting && *e->greeting ? e->greeting : NULL;
    ec->log = serve_log;
}

/* 0: serve; 1: help printed; -1: bad command line (one line printed). */
static int parse(int argc, char **argv, struct serve_opts *so, struct echo_opts *e)
{
    struct opt tab[SERVE_NOPTS + NECHO + 1];
    serve_opts_init(so);
    memset(e, 0, sizeof *e);
    echo_table(e, tab + serve_opts_table(so, tab));
    int npos = serve_parse(PROG, tab, argc, argv, so, 0, usage);
    if (npos < 0)
        return npos == SERVE_HELP ? 1 : -1;
    return echo_check(e);
}

int cmd_echo(int argc, char **argv)
{
    struct serve_opts so;
    struct echo_opts e;
    int rc = parse(argc, argv, &so, &e);
    if (rc != 0)
        return rc > 0 ? CLI_OK : CLI_USAGE;
    struct iop_server_config cfg;
    if (serve_config(PROG, &so, &defaults, &cfg) < 0)
        return CLI_USAGE;
    /* Both outlive the server: serve_run returns after freeing it. */
    struct iop_echo_config ec;
    struct iop_handler h;
    echo_config(&e, &ec);
    if (iop_echo_handler(&ec, &h) < 0) {
        fprintf(stderr, "%s: bad echo configuration\n", PROG); /* echo_check lets none by */
        return CLI_USAGE;
    }
    cfg.handler = &h;
    return serve_run(PROG, &so, &cfg);
}

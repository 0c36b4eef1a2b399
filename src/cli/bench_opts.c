/* bench_opts.c - the options every load generator shares (see
 * bench_common.h). */
#include "cli/bench_common.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"

#define MAX_SECS 86400.0 /* --duration, --warmup */

/* ---- options ---------------------------------------------------------------- */

void bench_opts_init(struct bench_opts *o)
{
    memset(o, 0, sizeof *o);
    o->conns = 10;
    o->threads = 1;
    o->duration = 10;
    o->backend = "auto";
}

/* A decimal number in (lo, MAX] (or [lo, MAX] when lo_ok), else one line. */
static int parse_num(const char *prog, const char *name, const char *v, double lo, int lo_ok,
                     double max, double *out)
{
    char *end;
    errno = 0;
    double x = *v ? strtod(v, &end) : 0;
    if (*v && !*end && !errno && x == x && (lo_ok ? x >= lo : x > lo) && x <= max) {
        *out = x;
        return 0;
    }
    fprintf(stderr, "%s: option '--%s' expects a number %s %g and at most %g, not '%s'\n", prog,
            name, lo_ok ? ">=" : ">", lo, max, v);
    return -1;
}

static int opt_duration(const char *prog, const char *v, void *dest)
{
    return parse_num(prog, "duration", v, 0, 0, MAX_SECS, dest);
}

static int opt_warmup(const char *prog, const char *v, void *dest)
{
    return parse_num(prog, "warmup", v, 0, 1, MAX_SECS, dest);
}

static int opt_rate(const char *prog, const char *v, void *dest)
{
    return parse_num(prog, "rate", v, 0, 0, 1e9, dest);
}

size_t bench_opts_table(struct bench_opts *o, struct opt *tab)
{
    const struct opt common[BENCH_NOPTS] = {
        {"conns", 'c', OPT_INT, &o->conns, 1, 1000000, NULL},
        {"idle", 0, OPT_INT, &o->idle, 0, 1000000, NULL},
        {"duration", 'd', OPT_FUNC, &o->duration, 0, 0, opt_duration},
        {"warmup", 0, OPT_FUNC, &o->warmup, 0, 0, opt_warmup},
        {"rate", 'R', OPT_FUNC, &o->rate, 0, 0, opt_rate},
        {"threads", 't', OPT_INT, &o->threads, 1, 1024, NULL},
        {"backend", 0, OPT_STR, &o->backend, 0, 0, NULL},
        {"edge", 0, OPT_FLAG, &o->edge, 0, 0, NULL},
        {"server-pid", 0, OPT_INT, &o->server_pid, 1, INT_MAX, NULL},
        {"no-spin", 0, OPT_FLAG, &o->no_spin, 0, 0, NULL},
        {"json", 0, OPT_FLAG, &o->json, 0, 0, NULL},
        {"help", 'h', OPT_FLAG, &o->help, 0, 0, NULL},
        {"tls", 0, OPT_FLAG, &o->tls, 0, 0, NULL},
        {"cacert", 0, OPT_STR, &o->cacert, 0, 0, NULL},
        {"insecure", 'k', OPT_FLAG, &o->insecure, 0, 0, NULL},
    };
    memcpy(tab, common, sizeof common);
    return BENCH_NOPTS;
}

void bench_opts_usage(FILE *f)
{
    fputs("Load options:\n"
          "  -c, --conns N          connections that send requests [10]\n"
          "      --idle K           K more connections, open and idle throughout [0]\n"
          "  -d, --duration SECS    the counted time [10]\n"
          "      --warmup SECS      run this long first, not counted [0]\n"
          "  -R, --rate R           open loop: R requests/s in all, on a fixed schedule;\n"
          "                         latency from each request's scheduled time\n"
          "                         (default: closed loop, latency from the send)\n"
          "  -t, --threads T        threads, each with its own loop and C/T connections [1]\n"
          "      --backend B        auto, select, poll, epoll or uring [auto: uring]\n"
          "      --edge             edge-triggered watchers (epoll, uring)\n"
          "      --no-spin          sleep in the kernel as soon as nothing is ready (by\n"
          "                         default the loop polls on for 20 us after an answer,\n"
          "                         so that the server need not wake this thread for the\n"
          "                         next; use it when the client shares its core)\n"
          "      --server-pid PID   also report the server's CPU time per request\n"
          "                         (/proc: PID and its children, over the counted time)\n"
          "      --json             one JSON object on stdout instead of the text report\n"
          "      --tls              speak TLS (echo; http: an https:// URL says so)\n"
          "      --cacert FILE      TLS: trust the certificates in FILE, not the system's\n"
          "  -k, --insecure         TLS: do not verify the server's certificate\n"
          "  -h, --help             this help\n"
          "\n"
          "A request counts when its answer completes inside the counted time; after\n"
          "it no new requests are sent, and answers still owed 5 s later are errors.\n"
          "A live progress line is shown when stdout is a terminal (not with --json).\n"
          "Exit status: 0 no error, 1 any error (connect, mismatch, short or bad answer,\n"
          "a connection lost, an answer missing), 2 bad command line.\n",
          f);
}

static int pid_alive(long pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    return access(path, R_OK) == 0;
}

int bench_opts_check(const char *prog, const char *noun, struct bench_opts *o, int npos, char **pos)
{
    int kind = iop_backend_parse(o->backend);
    const char *why = NULL;
    if (npos > 1) {
        fprintf(stderr, "%s: unexpected argument '%s' (try '%s --help')\n", prog, pos[1], prog);
        return -1;
    }
    if (npos == 0) {
        fprintf(stderr, "%s: missing %s (try '%s --help')\n", prog, noun, prog);
        return -1;
    }
    if (kind < 0)
        why = "unknown backend (auto, select, poll, epoll, uring)";
    else if (o->edge && (kind == IOP_BACKEND_SELECT || kind == IOP_BACKEND_POLL))
        why = "--edge needs the epoll or uring backend (or auto)";
    else if (kind == IOP_BACKEND_SELECT && o->conns + o->idle > FD_SETSIZE - 64)
        why = "select cannot watch fds past FD_SETSIZE: at most 960 connections with it";
    else if (o->server_pid && !pid_alive(o->server_pid))
        why = "--server-pid: no such process";
    if (why) {
        fprintf(stderr, "%s: %s\n", prog, why);
        return -1;
    }
    o->target = pos[0];
    if (o->threads > o->conns)
        o->threads = o->conns; /* a thread without active connections measures nothing */
    return 0;
}

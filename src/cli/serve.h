/* serve.h - what the server subcommands (echo, http) share: the common
 * server options of SPEC §2 and the run sequence.
 *
 * A subcommand puts the common entries into its option table with
 * serve_opts_table(), parses, turns them into a server config with
 * serve_config(), fills in its handler, and hands over to serve_run():
 *
 *     struct serve_opts so;
 *     struct opt tab[SERVE_NOPTS + 8];
 *     serve_opts_init(&so);
 *     size_t k = serve_opts_table(&so, tab);
 *     ... tab[k++] = own options, then a zeroed terminator ...
 *     opt_parse(prog, tab, argc, argv);
 *     serve_config(prog, &so, &defaults, &cfg);
 *     cfg.handler = &h;   (a stock protocol's handler carries its state)
 *     return serve_run(prog, &so, &cfg);
 *
 * Every error before serving starts is one line on stderr and exit status
 * 2 (CLI_USAGE). */
#ifndef IOP_CLI_SERVE_H
#define IOP_CLI_SERVE_H

#include <stddef.h>
#include <stdio.h>

#include "cli/opt.h"
#include "ioplex/server.h"

#define SERVE_MAX_LISTEN 64
#define SERVE_NOPTS      15 /* entries serve_opts_table() writes */

/* The common options as typed (strings are checked by serve_config). */
struct serve_opts {
    const char *listen[SERVE_MAX_LISTEN];
    size_t nlisten;
    const char *backend;      /* "auto" */
    const char *model;        /* "event" */
    const char *idle_timeout; /* NULL: the subcommand's default */
    const char *grace;        /* NULL: 10 s */
    int edge, quiet, help;
    long workers, processes, max_conns; /* 0: not given */
    long stack_kib;                     /* coro stack, KiB; 0: 64 */
    const char *tls_cert, *tls_key, *tls_password_file;
    const char *tls_alpn; /* set by the subcommand: "http/1.1", or NULL */
};

/* What differs between subcommands. */
struct serve_defaults {
    const char *listen;       /* "127.0.0.1:8001" */
    const char *idle_timeout; /* seconds, as the help text shows it: "0" */
    int no_udp;               /* stream listeners only (help text) */
};

void serve_opts_init(struct serve_opts *o);

/* Write the SERVE_NOPTS common entries (without a terminator) to tab;
 * their values land in *o.  Returns SERVE_NOPTS. */
size_t serve_opts_table(struct serve_opts *o, struct opt *tab);

/* opt_parse with tab (the common entries from serve_opts_table, then the
 * subcommand's) and at most max_pos positionals.  Returns their number
 * (now argv[0..n-1]), SERVE_HELP after calling usage(), or -1 after one
 * line on stderr. */
#define SERVE_HELP (-2)
int serve_parse(const char *prog, const struct opt *tab, int argc, char **argv,
                const struct serve_opts *o, int max_pos, void (*usage)(void));

/* The common options' lines for --help. */
void serve_usage(FILE *f, const struct serve_defaults *d);

/* Check the common options (each alone and together) and fill *cfg, all
 * but handler and data.  0, or -1 after one line on stderr. */
int serve_config(const char *prog, struct serve_opts *o, const struct serve_defaults *d,
                 struct iop_server_config *cfg);

/* Raise RLIMIT_NOFILE, ignore SIGPIPE, check that the backend starts,
 * create the server, bind every listener, print a `listening ADDR` line
 * for each, serve until SIGINT/SIGTERM, and free.  Returns the exit
 * status: 0 after a stop, 2 if serving could not start (one line). */
int serve_run(const char *prog, const struct serve_opts *o, const struct iop_server_config *cfg);

/* "--NAME SECS" (a decimal number >= 0) in ms: 0, or -1 (one line). */
int serve_secs(const char *prog, const char *name, const char *s, unsigned *ms);

/* A diagnostic line (no newline) to stderr as "ioplex: LINE": the log
 * callback of the server and of the protocols.  arg is unused. */
void serve_log(void *arg, const char *line);

#endif

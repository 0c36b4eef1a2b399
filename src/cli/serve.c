/* serve.c - the common server options and the run sequence (see serve.h). */
#include "cli/serve.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/reload.h"

#define MAX_THREADS_X_PROCS 1024      /* the library's sockets per listener */
#define MAX_SECS            4000000.0 /* fits in unsigned milliseconds */

void serve_opts_init(struct serve_opts *o)
{
    memset(o, 0, sizeof *o);
    o->backend = "auto";
    o->model = "event";
}

static int add_listen(const char *prog, const char *value, void *dest)
{
    struct serve_opts *o = dest;
    if (o->nlisten == SERVE_MAX_LISTEN) {
        fprintf(stderr, "%s: too many listeners (at most %d)\n", prog, SERVE_MAX_LISTEN);
        return -1;
    }
    o->listen[o->nlisten++] = value;
    return 0;
}

size_t serve_opts_table(struct serve_opts *o, struct opt *tab)
{
    const struct opt common[SERVE_NOPTS] = {
        {"listen", 'l', OPT_FUNC, o, 0, 0, add_listen},
        {"backend", 0, OPT_STR, &o->backend, 0, 0, NULL},
        {"edge", 0, OPT_FLAG, &o->edge, 0, 0, NULL},
        {"model", 0, OPT_STR, &o->model, 0, 0, NULL},
        {"workers", 0, OPT_INT, &o->workers, 1, MAX_THREADS_X_PROCS, NULL},
        {"processes", 0, OPT_INT, &o->processes, 1, MAX_THREADS_X_PROCS, NULL},
        {"max-conns", 0, OPT_INT, &o->max_conns, 1, INT_MAX, NULL},
        {"stack-size", 0, OPT_INT, &o->stack_kib, 16, 65536, NULL},
        {"idle-timeout", 0, OPT_STR, &o->idle_timeout, 0, 0, NULL},
        {"grace", 0, OPT_STR, &o->grace, 0, 0, NULL},
        {"quiet", 0, OPT_FLAG, &o->quiet, 0, 0, NULL},
        {"tls-cert", 0, OPT_STR, &o->tls_cert, 0, 0, NULL},
        {"tls-key", 0, OPT_STR, &o->tls_key, 0, 0, NULL},
        {"tls-password-file", 0, OPT_STR, &o->tls_password_file, 0, 0, NULL},
        {"help", 'h', OPT_FLAG, &o->help, 0, 0, NULL},
    };
    memcpy(tab, common, sizeof common);
    return SERVE_NOPTS;
}

void serve_usage(FILE *f, const struct serve_defaults *d)
{
    fprintf(f,
            "Server options:\n"
            "  -l, --listen ADDR        HOST:PORT, :PORT, [V6ADDR]:PORT, unix:PATH%s,\n"
            "                           tls:ADDR (with --tls-cert); repeatable [%s]\n"
            "      --backend B          auto, select, poll, epoll or uring [auto]\n"
            "      --edge               edge-triggered (epoll, uring, or auto)\n"
            "      --model M            event, iterative, thread, fork or coro [event]\n"
            "      --workers N          reactor threads, event and coro models [1]\n"
            "      --processes N        pre-forked worker processes [none]\n"
            "      --max-conns N        open connections at most [%u]\n"
            "      --stack-size KIB     coroutine stack per connection, coro model [%zu]\n"
            "      --idle-timeout SECS  close a connection idle that long, 0: never [%s]\n"
            "      --grace SECS         graceful stop lasts at most this long, 0: none [%u]\n"
            "      --quiet              no access log\n"
            "      --tls-cert FILE      TLS: certificate chain (PEM); every stream listener\n"
            "                           speaks TLS, or only those given as tls:ADDR\n"
            "      --tls-key FILE       TLS: private key (PEM)\n"
            "      --tls-password-file FILE  TLS: the key's password (first line)\n"
            "  -h, --help               this text\n"
            "\n"
            "A line `listening ADDR` on stdout per listener once bound; diagnostics on\n"
            "stderr.  SIGINT/SIGTERM stop gracefully, a second one at once.\n"
            "Exit status: 0 after a stop, 2 bad command line, address or backend.\n",
            d->no_udp ? "" : " or udp:HOST:PORT", d->listen, IOP_SERVER_DEFAULT_MAX_CONNS,
            IOP_SERVER_DEFAULT_STACK_SIZE / 1024, d->idle_timeout,
            IOP_SERVER_DEFAULT_GRACE_MS / 1000);
}

/* ---- checking ------------------------------------------------------------ */

/* "0.5" -> 500 ms.  Seconds are decimal, >= 0; a positive value never
 * rounds to 0 ms (0 means "never" or "the default" to the library). */
int serve_parse(const char *prog, const struct opt *tab, int argc, char **argv,
                const struct serve_opts *o, int max_pos, void (*usage)(void))
{
    int npos = opt_parse(prog, tab, argc, argv);
    if (npos < 0)
        return -1;
    if (o->help) {
        usage();
        return SERVE_HELP;
    }
    if (npos > max_pos) {
        fprintf(stderr, "%s: unexpected argument '%s' (try '%s --help')\n", prog, argv[max_pos],
                prog);
        return -1;
    }
    return npos;
}

int serve_secs(const char *prog, const char *name, const char *s, unsigned *ms)
{
    char *end;
    double v = 0;
    int ok = (isdigit((unsigned char)s[0]) || s[0] == '.');
    if (ok) {
        errno = 0;
        v = strtod(s, &end);
        ok = !errno && !*end && isfinite(v) && v >= 0 && v <= MAX_SECS;
    }
    if (!ok) {
        fprintf(stderr, "%s: option '--%s' expects seconds (a decimal number >= 0), not '%s'\n",
                prog, name, s);
        return -1;
    }
    *ms = (unsigned)(v * 1000.0 + 0.5);
    if (v > 0 && *ms == 0)
        *ms = 1;
    return 0;
}

static int is_blocking(int model)
{
    return model == IOP_MODEL_ITERATIVE || model == IOP_MODEL_THREAD || model == IOP_MODEL_FORK;
}

static int check_backend(const char *prog, const struct serve_opts *o, int backend)
{
    if (backend < 0) {
        fprintf(stderr, "%s: unknown backend '%s' (auto, select, poll, epoll, uring)\n", prog,
                o->backend);
        return -1;
    }
    if (o->edge && (backend == IOP_BACKEND_SELECT || backend == IOP_BACKEND_POLL)) {
        fprintf(stderr, "%s: --edge needs the epoll or uring backend (or auto), not %s\n", prog,
                o->backend);
        return -1;
    }
    return 0;
}

static int check_model(const char *prog, const struct serve_opts *o, int model)
{
    if (model < 0) {
        fprintf(stderr, "%s: unknown model '%s' (event, iterative, thread, fork, coro)\n", prog,
                o->model);
        return -1;
    }
    if (o->workers && is_blocking(model)) {
        fprintf(stderr, "%s: --workers needs the event or coro model, not %s\n", prog, o->model);
        return -1;
    }
    if (o->stack_kib && model != IOP_MODEL_CORO) {
        fprintf(stderr, "%s: --stack-size needs the coro model, not %s\n", prog, o->model);
        return -1;
    }
    long w = o->workers ? o->workers : 1, p = o->processes ? o->processes : 1;
    if (w * p > MAX_THREADS_X_PROCS) {
        fprintf(stderr, "%s: --workers x --processes is %ld, at most %d\n", prog, w * p,
                MAX_THREADS_X_PROCS);
        return -1;
    }
    return 0;
}

int serve_config(const char *prog, struct serve_opts *o, const struct serve_defaults *d,
                 struct iop_server_config *cfg)
{
    int backend = iop_backend_parse(o->backend), model = iop_model_parse(o->model);
    if (check_backend(prog, o, backend) < 0 || check_model(prog, o, model) < 0)
        return -1;
    memset(cfg, 0, sizeof *cfg);
    const char *idle = o->idle_timeout ? o->idle_timeout : d->idle_timeout;
    if (serve_secs(prog, "idle-timeout", idle, &cfg->idle_timeout_ms) < 0 ||
        (o->grace && serve_secs(prog, "grace", o->grace, &cfg->grace_ms) < 0))
        return -1;
    if (o->grace && cfg->grace_ms == 0)
        cfg->grace_ms = IOP_SERVER_GRACE_NONE; /* 0 is the library's "default" */
    if (o->nlisten == 0)
        o->listen[o->nlisten++] = d->listen;
    cfg->model = model;
    cfg->backend = backend;
    cfg->loop_flags = o->edge ? IOP_LOOP_EDGE : 0;
    cfg->workers = (unsigned)o->workers;
    cfg->processes = (unsigned)o->processes;
    cfg->max_conns = (unsigned)o->max_conns; /* 0: the library's default */
    cfg->stack_size = (size_t)o->stack_kib * 1024;
    cfg->log = serve_log;
    return 0;
}

/* ---- running ------------------------------------------------------------- */

void serve_log(void *arg, const char *line)
{
    (void)arg;
    /* One write(2) per line, so that lines of threads and worker
     * processes never interleave. */
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "ioplex: %s\n", line);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof buf) {
        n = sizeof buf - 1;
        buf[n - 1] = '\n';
    }
    ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
    (void)w; /* nowhere to report that stderr is gone */
}

/* Servers need fds: the soft limit goes up to the hard one. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* An explicit backend that cannot start (io_uring refused) fails here,
 * before anything is bound or printed. */
static int probe_backend(const char *prog, const struct serve_opts *o,
                         const struct iop_server_config *cfg)
{
    iop_loop *loop;
    int rc = iop_loop_new(cfg->backend, cfg->loop_flags, &loop);
    if (rc < 0) {
        fprintf(stderr, "%s: backend %s%s cannot start: %s\n", prog, o->backend,
                o->edge ? " (edge-triggered)" : "", iop_strerror(rc));
        return -1;
    }
    iop_loop_free(loop);
    return 0;
}

static int server_create(const char *prog, const struct serve_opts *o,
                         const struct iop_server_config *cfg, iop_server **srv)
{
    int rc = iop_server_new(cfg, srv);
    if (rc < 0)
        fprintf(stderr, "%s: cannot create the server (--model %s): %s\n", prog, o->model,
                iop_strerror(rc));
    return rc;
}

/* ---- TLS ------------------------------------------------------------------ */

static int tls_marked(const char *addr)
{
    return strncmp(addr, "tls:", 4) == 0;
}

/* The server context from --tls-cert/--tls-key, made before anything is
 * bound so that a bad pair is one line and exit 2 with nothing printed on
 * stdout; *ctx stays NULL without TLS. */
static int tls_setup(const char *prog, const struct serve_opts *o, iop_tls_ctx **ctx)
{
    int marked = 0;
    for (size_t i = 0; i < o->nlisten; i++)
        marked |= tls_marked(o->listen[i]);
    *ctx = NULL;
    if (!o->tls_cert && !o->tls_key && !o->tls_password_file) {
        if (!marked)
            return 0;
        fprintf(stderr, "%s: tls: listeners need --tls-cert and --tls-key\n", prog);
        return -1;
    }
    if (!o->tls_cert || !o->tls_key) {
        fprintf(stderr, "%s: --tls-cert and --tls-key go together\n", prog);
        return -1;
    }
    struct iop_tls_server_config cfg = {.cert_file = o->tls_cert,
                                        .key_file = o->tls_key,
                                        .password_file = o->tls_password_file,
                                        .alpn = o->tls_alpn};
    struct iop_tls_error err;
    if (iop_tls_server_new(&cfg, &err, ctx) < 0) {
        fprintf(stderr, "%s: %s\n", prog, err.msg);
        return -1;
    }
    fprintf(stderr, "%s: tls: files are encrypted in user space from a bounded buffer (%s)\n", prog,
            iop_tls_ktls_available() ? "the kernel offers kernel TLS, not used by this build yet"
                                     : "the kernel offers no kernel TLS");
    return 0;
}

/* Whether listener i (text as given) speaks TLS. */
static int tls_listener(const struct serve_opts *o, iop_tls_ctx *ctx, size_t i,
                        const iop_server *srv, size_t index)
{
    if (!ctx)
        return 0;
    int marked = 0;
    for (size_t k = 0; k < o->nlisten; k++)
        marked |= tls_marked(o->listen[k]);
    iop_addr a;
    if (iop_server_addr(srv, index, &a) < 0 || a.kind == IOP_ADDR_UDP)
        return 0;
    return marked ? tls_marked(o->listen[i]) : 1;
}

/* Bind every listener first, then print them all: a later address that
 * fails leaves no `listening` line behind.  is_tls[index] says which are
 * TLS. */
static int bind_all(const char *prog, const struct serve_opts *o, iop_server *srv, iop_tls_ctx *tls,
                    unsigned char *is_tls)
{
    for (size_t i = 0; i < o->nlisten; i++) {
        const char *text = o->listen[i] + (tls_marked(o->listen[i]) ? 4 : 0);
        int rc = iop_server_listen(srv, text);
        if (rc >= 0 && tls_listener(o, tls, i, srv, (size_t)rc)) {
            is_tls[rc] = 1;
            rc = iop_server_set_tls(srv, (size_t)rc, tls);
        }
        if (rc == -EPROTONOSUPPORT) {
            fprintf(stderr, "%s: cannot listen on '%s': not served by this command\n", prog,
                    o->listen[i]);
            return -1;
        }
        if (rc < 0) {
            fprintf(stderr, "%s: cannot listen on '%s': %s\n", prog, o->listen[i],
                    iop_strerror(rc));
            return -1;
        }
    }
    return 0;
}

static void print_listening(const iop_server *srv, const unsigned char *is_tls)
{
    for (size_t i = 0; i < iop_server_listeners(srv); i++) {
        iop_addr a;
        char text[IOP_ADDR_STRLEN];
        if (iop_server_addr(srv, i, &a) == 0 && iop_addr_format(&a, text, sizeof text) >= 0)
            printf("listening %s%s\n", i < SERVE_MAX_LISTEN && is_tls[i] ? "tls:" : "", text);
    }
    fflush(stdout);
}

int serve_run(const char *prog, const struct serve_opts *o, const struct iop_server_config *cfg)
{
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    if (probe_backend(prog, o, cfg) < 0)
        return CLI_USAGE;
    iop_tls_ctx *tls;
    if (tls_setup(prog, o, &tls) < 0)
        return CLI_USAGE;
    iop_server *srv;
    if (server_create(prog, o, cfg, &srv) < 0) {
        iop_tls_ctx_free(tls);
        return CLI_USAGE;
    }
    unsigned char is_tls[SERVE_MAX_LISTEN] = {0};
    int rc = bind_all(prog, o, srv, tls, is_tls);
    if (rc == 0 && (rc = iop_server_handle_signals(srv)) < 0)
        fprintf(stderr, "%s: signal handlers: %s\n", prog, iop_strerror(rc));
    struct reload reload = {0};
    if (rc == 0 && (rc = reload_start(&reload, tls)) < 0)
        fprintf(stderr, "%s: SIGHUP reload: %s\n", prog, iop_strerror(rc));
    if (rc == 0) {
        print_listening(srv, is_tls);
        if ((rc = iop_server_run(srv)) < 0)
            fprintf(stderr, "%s: cannot serve: %s\n", prog, iop_strerror(rc));
    }
    reload_stop(&reload);
    /* A late signal must neither reach the freed server nor kill a process
     * that has already stopped cleanly. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    iop_server_free(srv);
    iop_tls_ctx_free(tls);
    return rc < 0 ? CLI_USAGE : CLI_OK;
}

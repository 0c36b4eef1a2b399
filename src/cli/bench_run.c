/* bench_run.c - the load generators' main thread: start the workers, keep
 * the timeline (warm-up, counted window, progress line, --server-pid
 * samples, signals), join, report (see bench_common.h). */
#include "cli/bench_common.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli/cli.h"

#define NS 1000000000ull

/* ---- the main thread: the timeline ---------------------------------------------------- */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

struct timeline {
    long long cpu0, cpu1; /* at the window's start and end; -1: unknown */
    int have0, have1;
    int tty, finished;
    int shown; /* a progress line is on the terminal */
    uint64_t next_tick, prev_done, prev_t;
    sigset_t waitmask; /* the mask while waiting: SIGINT, SIGTERM let through */
};

static uint64_t sum_progress(const struct bench_run *r, uint64_t *errors)
{
    uint64_t done = 0;
    *errors = 0;
    for (int i = 0; i < r->nthreads; i++) {
        done += atomic_load_explicit(&r->th[i].progress, memory_order_relaxed);
        *errors += atomic_load_explicit(&r->th[i].perrors, memory_order_relaxed);
    }
    return done;
}

static void progress_line(const struct bench_run *r, struct timeline *tl, uint64_t now)
{
    uint64_t errors, done = sum_progress(r, &errors);
    double dt = (double)(now - tl->prev_t) / 1e9;
    double rate = dt > 0 ? (double)(done - tl->prev_done) / dt : 0;
    printf("\r%7.1f s%s  %12.0f %s/s  errors %llu\033[K", (double)(now - r->t0) / 1e9,
           now < r->t_meas ? " (warm-up)" : "", rate, r->proto->unit, (unsigned long long)errors);
    fflush(stdout);
    tl->shown = 1;
    tl->prev_done = done;
    tl->prev_t = now;
}

/* Make room for the report where the progress line was. */
static void progress_clear(struct timeline *tl)
{
    if (!tl->shown)
        return;
    fputs("\r\033[K", stdout);
    fflush(stdout);
    tl->shown = 0;
}

/* SIGINT, SIGTERM: end the window now, report what was measured.  A second
 * one kills (the default disposition is back). */
static void interrupt(struct bench_run *r)
{
    uint64_t now = bench_now();
    if (now < bench_t_end(r))
        atomic_store(&r->t_end, now);
    pthread_mutex_lock(&r->wake_mu);
    for (int i = 0; i < r->nthreads; i++)
        if (r->th[i].wake_live)
            iop_async_send(&r->th[i].wake);
    pthread_mutex_unlock(&r->wake_mu);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
}

/* Wait until `until`, a worker's end, or a signal. */
static void wait_until(struct bench_run *r, struct timeline *tl, uint64_t until)
{
    uint64_t now = bench_now(), d = until > now ? until - now : 0;
    struct timespec ts = {(time_t)(d / NS), (long)(d % NS)};
    struct pollfd pfd = {r->done_fd, POLLIN, 0};
    uint64_t v;
    if (ppoll(&pfd, 1, &ts, &tl->waitmask) > 0 && read(r->done_fd, &v, sizeof v) == sizeof v)
        tl->finished += (int)v;
    if (interrupted) {
        interrupted = 0;
        interrupt(r);
    }
}

static void sample_cpu(const struct bench_run *r, long long *ticks, int *have)
{
    *have = 1;
    *ticks = r->o->server_pid ? bench_proc_ticks(r->o->server_pid) : -1;
}

static void timeline(struct bench_run *r, struct timeline *tl)
{
    tl->next_tick = r->t0 + NS;
    tl->prev_t = r->t0;
    while (tl->finished < r->nthreads) {
        uint64_t now = bench_now(), end = bench_t_end(r), until = UINT64_MAX;
        if (!tl->have0 && now >= r->t_meas)
            sample_cpu(r, &tl->cpu0, &tl->have0);
        if (!tl->have1 && now >= end) {
            sample_cpu(r, &tl->cpu1, &tl->have1);
            progress_clear(tl);
        }
        if (tl->tty && now < end && now >= tl->next_tick) {
            progress_line(r, tl, now);
            tl->next_tick += NS;
        }
        if (!tl->have0)
            until = r->t_meas;
        else if (!tl->have1)
            until = tl->tty && tl->next_tick < end ? tl->next_tick : end;
        wait_until(r, tl, until);
    }
    if (!tl->have1)
        sample_cpu(r, &tl->cpu1, &tl->have1);
    progress_clear(tl);
}

/* ---- the main thread: start, join --------------------------------------------------- */

static int probe_backend(const struct bench_run *r)
{
    iop_loop *loop;
    int rc = iop_loop_new(r->kind, r->loop_flags, &loop);
    if (rc < 0) {
        fprintf(stderr, "%s: backend %s%s cannot start: %s\n", r->prog, r->o->backend,
                r->o->edge ? " --edge" : "", iop_strerror(rc));
        return -1;
    }
    iop_loop_free(loop);
    return 0;
}

static int fd_limit(const struct bench_run *r)
{
    long need = r->o->conns + r->o->idle + 16 + 8 * r->nthreads;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 0;
    if ((long)rl.rlim_cur < need && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
        (void)getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur == RLIM_INFINITY || (long)rl.rlim_cur >= need)
        return 0;
    fprintf(stderr, "%s: %ld connections need %ld fds, the limit is %ld (ulimit -n)\n", r->prog,
            r->o->conns + r->o->idle, need, (long)rl.rlim_cur);
    return -1;
}

/* Thread i's share of n: n/T, the first n%T one more. */
static size_t share(long n, int nthreads, int i, size_t *first)
{
    size_t q = (size_t)n / (size_t)nthreads, rem = (size_t)n % (size_t)nthreads;
    *first = (size_t)i * q + ((size_t)i < rem ? (size_t)i : rem);
    return q + ((size_t)i < rem);
}

static int start_threads(struct bench_run *r)
{
    int started = 0;
    for (int i = 0; i < r->nthreads; i++) {
        struct bench_thread *t = &r->th[i];
        size_t fa, fi, na = share(r->o->conns, r->nthreads, i, &fa);
        size_t ni = share(r->o->idle, r->nthreads, i, &fi);
        t->run = r;
        t->index = i;
        t->tfd = -1;
        t->nidle = ni;
        t->nconns = na + ni;
        hist_init(&t->hist);
        if (bench_thread_conns(t, (uint32_t)fa, (uint32_t)(r->o->conns + (long)fi)) < 0 ||
            pthread_create(&t->tid, NULL, bench_thread_main, t) != 0) {
            atomic_store(&r->abort, 1);
            if (!t->setup_err)
                t->setup_err = -ENOMEM;
            break;
        }
        started++;
    }
    return started;
}

static void free_threads(struct bench_run *r)
{
    for (int i = 0; i < r->nthreads; i++) {
        free(r->th[i].conns);
        free(r->th[i].heap);
        free(r->th[i].pdata);
    }
    free(r->th);
}

/* Block SIGINT and SIGTERM in every thread (workers inherit the mask); the
 * main thread takes them only inside ppoll. */
static void signals_block(struct timeline *tl, sigset_t *old)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, old);
    tl->waitmask = *old;
    sigdelset(&tl->waitmask, SIGINT);
    sigdelset(&tl->waitmask, SIGTERM);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* One line: why the run could not start. */
static int setup_error(const struct bench_run *r)
{
    int err = -ENOMEM;
    struct bench_totals tot;
    memset(&tot, 0, sizeof tot);
    for (int i = r->nthreads - 1; i >= 0; i--) {
        err = r->th[i].setup_err ? r->th[i].setup_err : err;
        for (int k = 0; k < BE_COUNT; k++)
            tot.err[k] += r->th[i].err[k];
    }
    fprintf(stderr, "%s: connecting %ld connections to %s: %s", r->prog, r->o->conns + r->o->idle,
            r->o->target,
            err == -ETIMEDOUT      ? "not all connected and answering within 30 s"
            : err == -ECONNABORTED ? "a connection failed before the start"
                                   : iop_strerror(err));
    if (err == -ECONNABORTED) {
        fputs(" (", stderr);
        bench_err_kinds(&tot, stderr, 0);
        fputc(')', stderr);
    }
    fputc('\n', stderr);
    return CLI_FAIL;
}

/* The client context for a TLS target: one line and -1 if it cannot be. */
static int tls_client(struct bench_run *r)
{
    const struct bench_opts *o = r->o;
    if (!o->tls) {
        if (!o->cacert && !o->insecure)
            return 0;
        fprintf(stderr, "%s: --cacert and --insecure need TLS (--tls, or an https:// URL)\n",
                r->prog);
        return -1;
    }
    struct iop_tls_client_config cfg = {
        .ca_file = o->cacert, .insecure = o->insecure, .alpn = o->alpn};
    struct iop_tls_error err;
    if (iop_tls_client_new(&cfg, &err, &r->tls) < 0) {
        fprintf(stderr, "%s: %s\n", r->prog, err.msg);
        return -1;
    }
    return 0;
}

int bench_run(const char *prog, const struct bench_opts *o, const struct bench_proto *p,
              const void *pconf, const iop_addr *addr, const char *what)
{
    struct bench_run r;
    struct timeline tl;
    memset(&r, 0, sizeof r);
    memset(&tl, 0, sizeof tl);
    r.prog = prog;
    r.o = o;
    r.proto = p;
    r.pconf = pconf;
    r.addr = *addr;
    r.what = what;
    r.kind = iop_backend_parse(o->backend);
    r.loop_flags = o->edge ? IOP_LOOP_EDGE : 0;
    r.nthreads = (int)o->threads;
    if (probe_backend(&r) < 0 || fd_limit(&r) < 0 || tls_client(&r) < 0)
        return CLI_USAGE;
    if (o->rate > 0) {
        r.step = 1e9 / o->rate;
        r.interval = (uint64_t)(r.step * (double)o->conns);
    }
    r.th = calloc((size_t)r.nthreads, sizeof *r.th);
    r.done_fd = eventfd(0, EFD_CLOEXEC);
    if (!r.th || r.done_fd < 0) {
        fprintf(stderr, "%s: %s\n", prog, strerror(r.th ? errno : ENOMEM));
        free(r.th);
        iop_tls_ctx_free(r.tls);
        return CLI_FAIL;
    }
    pthread_mutex_init(&r.wake_mu, NULL);
    sigset_t old;
    signals_block(&tl, &old);
    tl.tty = isatty(STDOUT_FILENO) && !o->json;
    int started = start_threads(&r);
    bench_gate_open(&r, started);
    if (!atomic_load(&r.abort))
        timeline(&r, &tl);
    for (int i = 0; i < started; i++)
        pthread_join(r.th[i].tid, NULL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    int rc = atomic_load(&r.abort) ? setup_error(&r) : bench_report(&r, tl.cpu0, tl.cpu1);
    close(r.done_fd);
    pthread_mutex_destroy(&r.wake_mu);
    free_threads(&r);
    iop_tls_ctx_free(r.tls);
    return rc;
}

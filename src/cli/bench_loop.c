/* bench_loop.c - `ioplex bench loop`: event-loop overhead per backend.
 *
 * The method of libevent's test/bench.c, as ../shared/peers/src/lb.h runs it
 * for the raw loops and the other libraries, so that the numbers share a
 * table: N socketpairs, the read end of each watched for readability.  A
 * round writes one byte into A pairs spread evenly over the N; each read
 * callback consumes what it finds and, while the round's budget of W writes
 * lasts, passes it on to the next pair.  The round ends when every byte
 * written has been read.  One warm-up round is discarded; the median and the
 * minimum of ROUNDS timed rounds are reported.
 *
 * Level-triggered callbacks read one byte per call, as the peers do, so the
 * work per event is the same and only the loop differs.  Edge-triggered ones
 * must drain: they read until a short read (the socket was empty then, and
 * bytes that arrive later make a new edge, as nginx also assumes) and count
 * every byte, but still write one byte per callback.  Where pairs are close
 * (A near N) bytes then merge and fewer stay in flight, so edge rows compare
 * with level rows only where the active pairs are spread out (A << N).
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/opt.h"
#include "ioplex/loop.h"

#define PROG       "ioplex bench loop"
#define MAX_LIST   16
#define MAX_CHOICE 8
#define EDGE_BUF   256

/* One backend as the benchmark runs it; label is the CSV name. */
struct choice {
    const char *label;
    int kind;
    int edge;
};

struct config {
    long n[MAX_LIST], a[MAX_LIST];
    int nn, na;
    long writes, rounds;
    int csv;
    struct choice be[MAX_CHOICE];
    int nbe;
};

/* io must stay first: callbacks get &pair->io and turn it back into the pair. */
struct pair {
    iop_io io; /* watches the read end */
    int wfd;   /* the write end */
};

/* The state of one (backend, N, A) while its rounds run. */
struct bench {
    iop_loop *loop;
    struct pair *pairs;
    int n;
    long budget; /* writes left in this round */
    long nfired; /* bytes written this round */
    long nread;  /* bytes read this round */
    int err;     /* first send/recv error (EPIPE for an unexpected EOF) */
    int done;    /* the round is over (or failed) */
};

enum row_status { ROW_OK, ROW_SKIP, ROW_UNAVAILABLE, ROW_FAIL };

struct row {
    enum row_status status;
    double median_us, min_us;
    char why[160]; /* for every status but ROW_OK */
};

/* ---- the per-event path ------------------------------------------------ */

static void fail(struct bench *b, int err)
{
    if (!b->err)
        b->err = err;
    b->done = 1;
}

static void fail_recv(struct bench *b, ssize_t got)
{
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return; /* a spurious wakeup costs a call, nothing else */
    fail(b, got == 0 ? EPIPE : errno);
}

static void send_byte(struct bench *b, int fd)
{
    if (send(fd, "x", 1, 0) == 1)
        b->nfired++;
    else
        fail(b, errno); /* even EAGAIN: the byte would be lost */
}

/* k bytes were read from p: pass one on while the budget lasts. */
static void pass_on(struct bench *b, struct pair *p, long k)
{
    b->nread += k;
    if (b->budget > 0) {
        b->budget--;
        send_byte(b, p + 1 == b->pairs + b->n ? b->pairs[0].wfd : p[1].wfd);
    }
    if (b->nread == b->nfired)
        b->done = 1;
}

static void on_level(iop_io *w, unsigned revents)
{
    struct bench *b = w->data;
    char c;
    (void)revents;
    ssize_t got = recv(w->fd, &c, 1, 0);
    if (got == 1)
        pass_on(b, (struct pair *)w, 1);
    else
        fail_recv(b, got);
}

static void on_edge(iop_io *w, unsigned revents)
{
    struct bench *b = w->data;
    char buf[EDGE_BUF];
    long total = 0;
    ssize_t got;
    (void)revents;
    while ((got = recv(w->fd, buf, sizeof buf, 0)) > 0) {
        total += got;
        if ((size_t)got < sizeof buf)
            break; /* drained: see the file comment */
    }
    if (got <= 0)
        fail_recv(b, got);
    if (total > 0)
        pass_on(b, (struct pair *)w, total);
}

/* ---- one round, many rounds -------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The watchdog: a round that makes no progress for STALL_TICKS ticks of a
 * one-second interval timer fails instead of hanging.  A timer of the loop
 * would change what is measured (a timeout on every wait); the signal only
 * interrupts a wait that is stuck anyway (EINTR: the loop returns). */
#define STALL_TICKS 5
static volatile sig_atomic_t ticks;

static void on_alarm(int sig)
{
    (void)sig;
    ticks++;
}

/* on: tick every second from now; off: stop (output is written with the
 * timer off, so that no write is cut short by EINTR). */
static void watchdog(int on)
{
    static int installed;
    if (!installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_alarm; /* no SA_RESTART: a stuck wait must return */
        sigemptyset(&sa.sa_mask);
        sigaction(SIGALRM, &sa, NULL);
        installed = 1;
    }
    struct itimerval it = {.it_interval = {on, 0}, .it_value = {on, 0}};
    setitimer(ITIMER_REAL, &it, NULL);
}

/* Run the loop until the round is done; -errno if it fails or stalls. */
static int run_round(struct bench *b)
{
    sig_atomic_t seen_tick = ticks;
    long seen_read = -1;
    int stalled = 0;
    /* IOP_RUN_ONCE until done rather than iop_loop_stop(), which would cost
     * the loop a wakeup (an eventfd write and read) per round. */
    while (!b->done) {
        int rc = iop_loop_run(b->loop, IOP_RUN_ONCE);
        if (rc < 0)
            return rc;
        if (ticks == seen_tick)
            continue;
        seen_tick = ticks;
        stalled = b->nread == seen_read ? stalled + 1 : 0;
        seen_read = b->nread;
        if (stalled >= STALL_TICKS)
            return -ETIMEDOUT;
    }
    return 0;
}

/* One round; its length in µs, or -1 (b->err says why). */
static double round_us(struct bench *b, int active, long writes)
{
    b->nread = b->nfired = 0;
    b->budget = writes;
    b->done = 0;
    int space = b->n / active;
    uint64_t t0 = now_ns();
    for (int k = 0; k < active; k++)
        send_byte(b, b->pairs[k * space].wfd);
    int rc = run_round(b);
    if (rc < 0) {
        b->err = -rc;
        return -1;
    }
    uint64_t t1 = now_ns();
    if (b->err || b->nread != b->nfired || b->budget != 0) {
        if (!b->err)
            b->err = EPROTO;
        return -1;
    }
    return (double)(t1 - t0) / 1e3;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

static void run_rounds(struct bench *b, int active, const struct config *cfg, struct row *out)
{
    size_t nr = (size_t)cfg->rounds;
    double *t = malloc(nr * sizeof *t);
    if (!t) {
        out->status = ROW_FAIL;
        snprintf(out->why, sizeof out->why, "out of memory");
        return;
    }
    for (long r = -1; r < cfg->rounds; r++) { /* round -1 is the warm-up */
        double us = round_us(b, active, cfg->writes);
        if (us < 0) {
            out->status = ROW_FAIL;
            const char *why = b->err == ETIMEDOUT ? "no progress for 5 s" : strerror(b->err);
            snprintf(out->why, sizeof out->why, "round failed: %s (read %ld of %ld, budget %ld)",
                     why, b->nread, b->nfired, b->budget);
            free(t);
            return;
        }
        if (r >= 0)
            t[r] = us;
    }
    qsort(t, nr, sizeof *t, cmp_double);
    out->status = ROW_OK;
    out->median_us = nr % 2 ? t[nr / 2] : (t[nr / 2 - 1] + t[nr / 2]) / 2;
    out->min_us = t[0];
    free(t);
}

/* ---- setting up and tearing down one (backend, N) ---------------------- */

static void bench_close(struct bench *b)
{
    for (int i = 0; b->pairs && i < b->n; i++) {
        iop_io_stop(&b->pairs[i].io);
        if (b->pairs[i].io.fd >= 0)
            close(b->pairs[i].io.fd);
        if (b->pairs[i].wfd >= 0)
            close(b->pairs[i].wfd);
    }
    free(b->pairs);
    b->pairs = NULL;
    if (b->loop)
        iop_loop_free(b->loop);
    b->loop = NULL;
}

static int open_pairs(struct bench *b, const struct choice *c, struct row *out)
{
    for (int i = 0; i < b->n; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
            snprintf(out->why, sizeof out->why, "socketpair #%d: %s", i, strerror(errno));
            return ROW_FAIL;
        }
        struct pair *p = &b->pairs[i];
        iop_io_init(&p->io, sv[0], c->edge ? on_edge : on_level);
        p->io.data = b;
        p->wfd = sv[1];
        int rc = iop_io_start(b->loop, &p->io, IOP_READ | (c->edge ? IOP_EDGE : IOP_LEVEL));
        if (rc == -ERANGE) {
            snprintf(out->why, sizeof out->why, "skip: fd >= FD_SETSIZE (fd %d, FD_SETSIZE %d)",
                     sv[0], FD_SETSIZE);
            return ROW_SKIP;
        }
        if (rc < 0) {
            snprintf(out->why, sizeof out->why, "watching fd %d: %s", sv[0], iop_strerror(rc));
            return ROW_FAIL;
        }
    }
    return ROW_OK;
}

/* The loop first, then the pairs: select's fds stay as low as they can. */
static int bench_open(struct bench *b, const struct choice *c, int n, struct row *out)
{
    memset(b, 0, sizeof *b);
    b->n = n;
    int rc = iop_loop_new(c->kind, 0, &b->loop);
    if (rc < 0) {
        b->loop = NULL;
        snprintf(out->why, sizeof out->why, "unavailable: %s", iop_strerror(rc));
        return ROW_UNAVAILABLE;
    }
    b->pairs = malloc((size_t)n * sizeof *b->pairs);
    if (!b->pairs) {
        snprintf(out->why, sizeof out->why, "out of memory");
        return ROW_FAIL;
    }
    for (int i = 0; i < n; i++)
        b->pairs[i] = (struct pair){.io = {.fd = -1}, .wfd = -1};
    return open_pairs(b, c, out);
}

static void measure(const struct choice *c, int n, int a, const struct config *cfg, struct row *out)
{
    struct bench b;
    memset(out, 0, sizeof *out);
    out->status = bench_open(&b, c, n, out);
    if (out->status == ROW_OK) {
        watchdog(1);
        run_rounds(&b, a, cfg, out);
        watchdog(0);
    }
    bench_close(&b);
}

/* ---- output ------------------------------------------------------------ */

static void print_title(const struct choice *c, const struct config *cfg)
{
    if (cfg->csv)
        return;
    printf("\n%s (%s-triggered)\n", c->label, c->edge ? "edge" : "level");
    /* widths in bytes: each µ is two */
    printf("%7s %7s %7s %17s %11s %9s\n", "N", "active", "writes", "median µs/round", "min µs",
           "ns/event");
}

static void print_row(const struct choice *c, int n, int a, const struct config *cfg,
                      const struct row *r)
{
    if (r->status != ROW_OK) {
        fprintf(stderr, "%s: %s N=%d A=%d: %s\n", PROG, c->label, n, a, r->why);
        if (!cfg->csv)
            printf("%7d %7d %7ld   %s\n", n, a, cfg->writes, r->why);
        return;
    }
    if (cfg->csv) {
        printf("ioplex,%s,%d,%d,%ld,%.1f,%.1f\n", c->label, n, a, cfg->writes, r->median_us,
               r->min_us);
        return;
    }
    double ns_per_event = r->median_us * 1000 / (double)(cfg->writes + a);
    printf("%7d %7d %7ld %16.1f %10.1f %9.0f\n", n, a, cfg->writes, r->median_us, r->min_us,
           ns_per_event);
}

/* ---- the command ------------------------------------------------------- */

static const struct choice all_backends[] = {
    {"select", IOP_BACKEND_SELECT, 0}, {"poll", IOP_BACKEND_POLL, 0},
    {"epoll", IOP_BACKEND_EPOLL, 0},   {"epoll-et", IOP_BACKEND_EPOLL, 1},
    {"uring", IOP_BACKEND_URING, 0},   {"uring-et", IOP_BACKEND_URING, 1},
};
#define NALL ((int)(sizeof all_backends / sizeof all_backends[0]))

static const struct choice *find_choice(int kind, int edge)
{
    for (int i = 0; i < NALL; i++)
        if (all_backends[i].kind == kind && all_backends[i].edge == edge)
            return &all_backends[i];
    return NULL;
}

/* The backend that "auto" picks on this machine. */
static int resolve_auto(void)
{
    iop_loop *l;
    int rc = iop_loop_new(IOP_BACKEND_AUTO, 0, &l);
    if (rc < 0)
        return rc;
    rc = iop_backend_parse(iop_loop_backend(l));
    iop_loop_free(l);
    return rc;
}

/* --backend NAME [--edge] -> cfg->be.  NAME: a backend name or "auto", a
 * CSV label ("epoll-et"), or "all" (with --edge: the edge-triggered ones). */
static int pick_backends(struct config *cfg, const char *name, int edge)
{
    if (!strcmp(name, "all")) {
        for (int i = 0; i < NALL; i++)
            if (!edge || all_backends[i].edge)
                cfg->be[cfg->nbe++] = all_backends[i];
        return 0;
    }
    int kind;
    if (!strcmp(name, "epoll-et") || !strcmp(name, "uring-et")) {
        kind = name[0] == 'e' ? IOP_BACKEND_EPOLL : IOP_BACKEND_URING;
        edge = 1;
    } else if ((kind = iop_backend_parse(name)) < 0) {
        fprintf(stderr, "%s: unknown backend '%s' (select, poll, epoll, uring, auto, all)\n", PROG,
                name);
        return -1;
    }
    if (kind == IOP_BACKEND_AUTO && (kind = resolve_auto()) < 0) {
        fprintf(stderr, "%s: no backend could start: %s\n", PROG, iop_strerror(kind));
        return -1;
    }
    const struct choice *c = find_choice(kind, edge);
    if (!c) {
        fprintf(stderr, "%s: --edge needs the epoll or uring backend, not %s\n", PROG, name);
        return -1;
    }
    cfg->be[cfg->nbe++] = *c;
    return 0;
}

/* "100,1000,9000" -> at most MAX_LIST integers from 1 to 1000000. */
static int parse_list(const char *spell, const char *s, long *out, int *count)
{
    char buf[256];
    int n = 0;
    if (strlen(s) < sizeof buf) {
        strcpy(buf, s);
        char *save = NULL;
        for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            if (n == MAX_LIST || opt_int(tok, 1, 1000000, &out[n]) < 0) {
                n = 0;
                break;
            }
            n++;
        }
    }
    if (n == 0) {
        fprintf(stderr,
                "%s: option '%s' expects 1 to %d integers from 1 to 1000000, "
                "comma-separated, not '%s'\n",
                PROG, spell, MAX_LIST, s);
        return -1;
    }
    *count = n;
    return 0;
}

static const char usage[] =
    "usage: ioplex bench loop [--backend B|all] [--edge] [-n FDS] [-a ACTIVE] [-w WRITES]\n"
    "                         [-r ROUNDS] [--csv]\n"
    "\n"
    "Event-loop overhead in the method of libevent's test/bench.c: FDS socketpairs,\n"
    "ACTIVE of them (spread evenly) get a byte; each read callback passes what it\n"
    "read on to the next pair until WRITES writes are done.  Prints µs per round,\n"
    "median and min of ROUNDS rounds after one warm-up, and ns per event\n"
    "(median / (WRITES + ACTIVE)), a table per backend.\n"
    "\n"
    "  -b, --backend B       select, poll, epoll, uring, auto, epoll-et, uring-et, or\n"
    "                        all: select poll epoll epoll-et uring uring-et [all]\n"
    "  -e, --edge            edge-triggered watchers (epoll, uring; with all: only those)\n"
    "  -n, --fds N[,N...]    socketpairs [100]\n"
    "  -a, --active A[,A...] pairs active at once [100]; combinations with A > N are skipped\n"
    "  -w, --writes W        writes per round [1000]\n"
    "  -r, --rounds R        timed rounds [25]\n"
    "      --csv             rows: ioplex,BACKEND,N,active,writes,median_us,min_us\n"
    "  -h, --help            this text\n"
    "\n"
    "Exit status: 0 measured, 1 failed, 2 bad command line or backend unavailable,\n"
    "3 skipped (select with an fd >= FD_SETSIZE).\n";

static int count_combos(const struct config *cfg)
{
    int k = 0;
    for (int i = 0; i < cfg->nn; i++)
        for (int j = 0; j < cfg->na; j++)
            k += cfg->a[j] <= cfg->n[i];
    return k;
}

/* 0: run; 1: help printed; -1: bad command line (one line printed). */
static int parse_args(struct config *cfg, int argc, char **argv)
{
    const char *backend = "all", *ns = "100", *as = "100";
    int edge = 0, help = 0, csv = 0;
    long writes = 1000, rounds = 25;
    const struct opt opts[] = {
        {"backend", 'b', OPT_STR, &backend, 0, 0, NULL},
        {"edge", 'e', OPT_FLAG, &edge, 0, 0, NULL},
        {"fds", 'n', OPT_STR, &ns, 0, 0, NULL},
        {"active", 'a', OPT_STR, &as, 0, 0, NULL},
        {"writes", 'w', OPT_INT, &writes, 0, 100000000, NULL},
        {"rounds", 'r', OPT_INT, &rounds, 1, 10000, NULL},
        {"csv", 0, OPT_FLAG, &csv, 0, 0, NULL},
        {"help", 'h', OPT_FLAG, &help, 0, 0, NULL},
        {NULL, 0, OPT_FLAG, NULL, 0, 0, NULL},
    };
    int npos = opt_parse(PROG, opts, argc, argv);
    if (npos < 0)
        return -1;
    if (help) {
        fputs(usage, stdout);
        return 1;
    }
    if (npos > 0) {
        fprintf(stderr, "%s: unexpected argument '%s' (try '%s --help')\n", PROG, argv[0], PROG);
        return -1;
    }
    memset(cfg, 0, sizeof *cfg);
    cfg->writes = writes;
    cfg->rounds = rounds;
    cfg->csv = csv;
    if (parse_list("-n", ns, cfg->n, &cfg->nn) < 0 || parse_list("-a", as, cfg->a, &cfg->na) < 0)
        return -1;
    if (!count_combos(cfg)) {
        fprintf(stderr, "%s: need 1 <= ACTIVE <= FDS (-a %s, -n %s)\n", PROG, as, ns);
        return -1;
    }
    return pick_backends(cfg, backend, edge);
}

/* Every pair is two fds: raise the soft limit to the hard one. */
static int raise_nofile(const struct config *cfg)
{
    long maxn = 0;
    for (int i = 0; i < cfg->nn; i++)
        if (cfg->n[i] > maxn)
            maxn = cfg->n[i];
    rlim_t need = (rlim_t)(2 * maxn + 16);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 0; /* let socketpair() say what is wrong */
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
        (void)getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && need > rl.rlim_cur) {
        fprintf(stderr, "%s: %ld pairs need about %lu fds; the limit is %lu (ulimit -Hn)\n", PROG,
                maxn, (unsigned long)need, (unsigned long)rl.rlim_cur);
        return -1;
    }
    return 0;
}

/* Runs every row; returns the exit status. */
static int run_all(const struct config *cfg)
{
    int seen[ROW_FAIL + 1] = {0};
    if (!cfg->csv)
        printf("%s: W=%ld writes per round, median and min of %ld rounds after a warm-up\n", PROG,
               cfg->writes, cfg->rounds);
    for (int k = 0; k < cfg->nbe; k++) {
        const struct choice *c = &cfg->be[k];
        print_title(c, cfg);
        for (int i = 0; i < cfg->nn; i++) {
            for (int j = 0; j < cfg->na; j++) {
                if (cfg->a[j] > cfg->n[i])
                    continue;
                struct row r;
                measure(c, (int)cfg->n[i], (int)cfg->a[j], cfg, &r);
                print_row(c, (int)cfg->n[i], (int)cfg->a[j], cfg, &r);
                fflush(stdout);
                seen[r.status]++;
            }
        }
    }
    if (seen[ROW_FAIL])
        return CLI_FAIL;
    if (seen[ROW_OK])
        return CLI_OK;
    return seen[ROW_UNAVAILABLE] ? CLI_USAGE : CLI_SKIP;
}

int cmd_bench_loop(int argc, char **argv)
{
    struct config cfg;
    int rc = parse_args(&cfg, argc, argv);
    if (rc != 0)
        return rc > 0 ? CLI_OK : CLI_USAGE;
    if (raise_nofile(&cfg) < 0)
        return CLI_FAIL;
    return run_all(&cfg);
}

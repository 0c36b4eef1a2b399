/* bench_common.c - the load generators' shared machinery (see bench_common.h). */
#include "cli/bench_common.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"

#define MAX_CONNECTING 256     /* handshakes in flight per thread while setting up */
#define SETUP_MS       30000   /* connecting and proving live, at most */
#define MAX_SECS       86400.0 /* --duration, --warmup */
#define NS             1000000000ull
#define SPIN_NS        20000 /* keep polling this long after the last answer */

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

/* ---- time and pacing ---------------------------------------------------------- */

uint64_t bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static uint64_t t_end(const struct bench_run *r)
{
    return atomic_load_explicit(&r->t_end, memory_order_relaxed);
}

struct bconn *bench_conn(const struct bench_thread *t, size_t i)
{
    return (struct bconn *)(t->conns + i * t->run->proto->conn_size);
}

static void heap_set(struct bench_thread *t, size_t i, struct bconn *c)
{
    t->heap[i] = c;
    c->hslot = i;
}

static void heap_up(struct bench_thread *t, size_t i)
{
    struct bconn *c = t->heap[i];
    while (i > 0 && t->heap[(i - 1) / 2]->next_due > c->next_due) {
        heap_set(t, i, t->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    heap_set(t, i, c);
}

static void heap_down(struct bench_thread *t, size_t i)
{
    struct bconn *c = t->heap[i];
    for (;;) {
        size_t k = 2 * i + 1;
        if (k >= t->nheap)
            break;
        if (k + 1 < t->nheap && t->heap[k + 1]->next_due < t->heap[k]->next_due)
            k++;
        if (t->heap[k]->next_due >= c->next_due)
            break;
        heap_set(t, i, t->heap[k]);
        i = k;
    }
    heap_set(t, i, c);
}

static void heap_remove(struct bench_thread *t, struct bconn *c)
{
    size_t i = c->hslot;
    if (i == SIZE_MAX)
        return;
    c->hslot = SIZE_MAX;
    struct bconn *last = t->heap[--t->nheap];
    if (last == c)
        return;
    heap_set(t, i, last);
    heap_up(t, i);
    heap_down(t, last->hslot);
}

/* Fire the timerfd when the earliest waiting connection is due. */
static void pace_arm(struct bench_thread *t)
{
    if (!t->nheap)
        return; /* a fire that finds nothing due is harmless */
    uint64_t due = t->heap[0]->next_due;
    if (t->armed && t->armed <= due)
        return;
    struct itimerspec its = {{0, 0}, {(time_t)(due / NS), (long)(due % NS)}};
    if (timerfd_settime(t->tfd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
        t->armed = due;
}

static void heap_push(struct bench_thread *t, struct bconn *c)
{
    if (t->nheap == t->capheap) {
        /* every connection fits: sized once from nconns in thread_setup */
        return;
    }
    t->heap[t->nheap] = c;
    c->hslot = t->nheap++;
    heap_up(t, c->hslot);
    if (!t->pacing)
        pace_arm(t);
}

static void pace_cb(iop_io *w, unsigned revents)
{
    struct bench_thread *t = w->data;
    uint64_t x;
    (void)revents;
    if (read(t->tfd, &x, sizeof x) < 0 && errno != EAGAIN)
        return;
    t->armed = 0;
    t->pacing = 1; /* one timerfd_settime at the end, not one per push */
    uint64_t now = bench_now();
    while (t->nheap && t->heap[0]->next_due <= now) {
        struct bconn *c = t->heap[0];
        heap_remove(t, c);
        bench_pump(c);
    }
    t->pacing = 0;
    pace_arm(t);
}

/* ---- accounting ----------------------------------------------------------------- */

static void finish(struct bench_thread *t)
{
    iop_timer_stop(&t->timer);
    iop_loop_stop(t->loop);
    t->finished = 1;
}

void bench_pump(struct bconn *c)
{
    struct bench_thread *t = c->t;
    const struct bench_run *r = t->run;
    while (c->state == BC_OPEN && c->inflight < c->cap && c->hslot == SIZE_MAX && t->started &&
           !t->stopping) {
        uint64_t now = bench_now(), start = now;
        if (now >= t_end(r))
            return; /* the end timer is about to say so */
        if (r->interval) {
            if (c->next_due > now) {
                heap_push(t, c);
                return;
            }
            start = c->next_due;
            c->next_due += r->interval;
        }
        c->inflight++;
        t->inflight++;
        r->proto->send(c, start);
    }
}

void bench_done(struct bconn *c, uint64_t start, uint64_t bytes)
{
    struct bench_thread *t = c->t;
    const struct bench_run *r = t->run;
    uint64_t now = bench_now();
    c->inflight--;
    t->inflight--;
    if (now >= r->t_meas && now < t_end(r)) {
        hist_record(&t->hist, now > start ? now - start : 0);
        t->counted++;
        t->bytes += bytes;
    }
    atomic_store_explicit(&t->progress, ++t->done, memory_order_relaxed);
    if (t->stopping && !t->inflight)
        finish(t);
}

void bench_error(struct bench_thread *t, int kind)
{
    t->err[kind]++;
    atomic_fetch_add_explicit(&t->perrors, 1, memory_order_relaxed);
}

/* The setup phase runs the loop until every connection is ready or one
 * failed. */
static void setup_check(struct bench_thread *t)
{
    if (t->setup_running && (!t->setup_left || t->setup_err))
        iop_loop_stop(t->loop);
}

void bench_ready(struct bconn *c)
{
    if (c->ready)
        return;
    c->ready = 1;
    c->t->setup_left--;
    setup_check(c->t);
}

/* ---- connections ------------------------------------------------------------------ */

void bench_drop(struct bconn *c)
{
    struct bench_thread *t = c->t;
    t->inflight -= c->inflight;
    c->inflight = 0;
    if (t->stopping && !t->inflight)
        finish(t);
}

/* c will never send again: give up what it owes. */
static void conn_dead(struct bconn *c)
{
    struct bench_thread *t = c->t;
    if (!c->ready && !t->setup_err) {
        t->setup_err = -ECONNABORTED; /* not proven live: the run cannot start */
        setup_check(t);
    }
    c->state = BC_DEAD;
    heap_remove(t, c);
    bench_drop(c);
}

void bench_close(struct bconn *c)
{
    if (c->state == BC_OPEN) {
        iop_stream_close(c->s);
        c->s = NULL;
    } else if (c->state == BC_CONNECTING) {
        int fd = c->cw.fd;
        iop_io_stop(&c->cw);
        close(fd);
        c->t->connecting--;
    }
    if (c->state != BC_DEAD)
        c->state = BC_NEW;
    heap_remove(c->t, c);
}

void bench_fail(struct bconn *c, int kind)
{
    bench_error(c->t, kind);
    bench_close(c);
    conn_dead(c);
}

static void connect_failed(struct bconn *c, int err)
{
    struct bench_thread *t = c->t;
    if (!c->ready && !t->setup_err) {
        t->setup_err = err;
        setup_check(t);
    }
    if (c->ready)
        bench_error(t, BE_CONNECT);
    conn_dead(c);
}

static void opened(struct bconn *c, int fd)
{
    struct bench_thread *t = c->t;
    iop_stream *s;
    int rc = iop_stream_open(t->ctx, fd, &s); /* owns fd from here, also on failure */
    const struct bench_opts *o = t->run->o;
    if (rc == 0) {
        if (t->run->tls)
            rc = iop_stream_tls(s, t->run->tls, o->tls_name[0] ? o->tls_name : NULL);
        iop_stream_set_data(s, c);
        if (rc == 0)
            rc = iop_stream_read_start(s);
        if (rc < 0)
            iop_stream_close(s);
    }
    if (rc < 0) {
        connect_failed(c, rc);
        return;
    }
    c->s = s;
    c->state = BC_OPEN;
    t->run->proto->on_open(c);
}

static void connect_more(struct bench_thread *t);

static void connect_cb(iop_io *w, unsigned revents)
{
    struct bconn *c = w->data;
    int fd = w->fd, err = 0;
    socklen_t len = sizeof err;
    (void)revents;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    iop_io_stop(w);
    c->t->connecting--;
    if (err) {
        close(fd);
        connect_failed(c, -err);
    } else {
        opened(c, fd);
    }
    connect_more(c->t);
}

/* Start connecting c.  Unix sockets connect blocking: a full backlog makes
 * a nonblocking connect fail with EAGAIN instead of waiting. */
static int conn_connect(struct bconn *c)
{
    struct bench_thread *t = c->t;
    const iop_addr *a = &t->run->addr;
    int tcp = a->kind != IOP_ADDR_UNIX, one = 1;
    int fd = socket(a->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC | (tcp ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        return -errno;
    if (tcp)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, &a->u.sa, a->len) == 0) {
        opened(c, fd);
        return 0;
    }
    int rc = -errno;
    if (rc == -EINPROGRESS) {
        iop_io_init(&c->cw, fd, connect_cb);
        c->cw.data = c;
        rc = iop_io_start(t->loop, &c->cw, IOP_WRITE);
    }
    if (rc < 0) {
        close(fd);
        return rc;
    }
    c->state = BC_CONNECTING;
    t->connecting++;
    return 0;
}

void bench_reopen(struct bconn *c)
{
    if (c->state != BC_NEW)
        return;
    c->t->reopened++;
    int rc = conn_connect(c);
    if (rc < 0)
        connect_failed(c, rc);
}

static void connect_more(struct bench_thread *t)
{
    while (t->connecting < MAX_CONNECTING && t->next_connect < t->nconns && !t->setup_err) {
        struct bconn *c = bench_conn(t, t->next_connect++);
        int rc = conn_connect(c);
        if (rc < 0)
            connect_failed(c, rc);
    }
}

/* ---- a worker thread ---------------------------------------------------------------- */

static void end_of_window(struct bench_thread *t);

static void timer_cb(iop_timer *tm)
{
    struct bench_thread *t = tm->data;
    if (!t->started) {
        t->setup_err = -ETIMEDOUT;
        setup_check(t);
    } else if (!t->stopping) {
        end_of_window(t);
    } else {
        t->err[BE_UNANSWERED] += t->inflight;
        atomic_fetch_add_explicit(&t->perrors, t->inflight, memory_order_relaxed);
        finish(t);
    }
}

static void end_of_window(struct bench_thread *t)
{
    t->stopping = 1;
    while (t->nheap)
        heap_remove(t, t->heap[t->nheap - 1]);
    if (!t->inflight)
        finish(t);
    else
        iop_timer_start(t->loop, &t->timer, BENCH_DRAIN_MS, 0);
}

/* The main thread moved the end of the window (SIGINT). */
static void wake_cb(iop_async *a)
{
    struct bench_thread *t = a->data;
    if (t->started && !t->stopping && bench_now() >= t_end(t->run))
        end_of_window(t);
}

static int thread_loop(struct bench_thread *t)
{
    struct bench_run *r = t->run;
    int rc = iop_loop_new(&t->loop, r->kind, r->loop_flags);
    if (rc < 0)
        return rc;
    iop_timer_init(&t->timer, timer_cb); /* first: teardown stops it whatever fails next */
    t->timer.data = t;
    struct iop_stream_config cfg = {
        .on_read = r->proto->on_read, .read_size = (unsigned)r->proto->read_size, .data = t};
    rc = iop_stream_ctx_new(t->loop, &cfg, &t->ctx);
    if (rc < 0)
        return rc;
    t->backend_name = iop_loop_backend(t->loop);
    t->wake.data = t;
    rc = iop_async_start(t->loop, &t->wake, wake_cb);
    if (rc == 0) {
        pthread_mutex_lock(&t->run->wake_mu);
        t->wake_live = 1;
        pthread_mutex_unlock(&t->run->wake_mu);
    }
    if (rc < 0 || !r->interval)
        return rc;
    t->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (t->tfd < 0)
        return -errno;
    iop_io_init(&t->tio, t->tfd, pace_cb);
    t->tio.data = t;
    return iop_io_start(t->loop, &t->tio, IOP_READ | IOP_LEVEL);
}

static int thread_conns(struct bench_thread *t, uint32_t first_active, uint32_t first_idle)
{
    const struct bench_proto *p = t->run->proto;
    t->conns = calloc(t->nconns ? t->nconns : 1, p->conn_size);
    t->heap = calloc(t->nconns ? t->nconns : 1, sizeof *t->heap);
    if (!t->conns || !t->heap)
        return -ENOMEM;
    t->capheap = t->nconns;
    for (size_t i = 0; i < t->nconns; i++) {
        struct bconn *c = bench_conn(t, i);
        c->t = t;
        c->idle = i < t->nidle;
        c->id = c->idle ? first_idle + (uint32_t)i : first_active + (uint32_t)(i - t->nidle);
        c->cap = c->idle ? 0 : p->cap;
        c->hslot = SIZE_MAX;
    }
    t->setup_left = t->nconns;
    return 0;
}

/* Connect everything and let the protocol prove it live. */
static int thread_setup(struct bench_thread *t)
{
    int rc = thread_loop(t);
    if (rc == 0 && t->run->proto->thread_init)
        rc = t->run->proto->thread_init(t);
    if (rc < 0)
        return rc;
    rc = iop_timer_start(t->loop, &t->timer, SETUP_MS, 0);
    connect_more(t);
    if (rc == 0 && t->setup_left && !t->setup_err) {
        t->setup_running = 1;
        rc = iop_loop_run(t->loop, IOP_RUN_DEFAULT); /* until setup_check stops it */
        t->setup_running = 0;
    }
    iop_timer_stop(&t->timer);
    return rc < 0 ? rc : t->setup_err;
}

/* Run until finish(), polling without sleeping while answers keep coming
 * (up to SPIN_NS after the last), then sleeping in the kernel.  A client
 * asleep between answers makes the server pay for waking it, an interrupt
 * to this core per answer (measured against h2o on this machine's guests:
 * 13.9 us of server CPU per request with a sleeping client, 11.3 polling;
 * req/s +13 %), and that time would count as the server's. */
static void run_polling(struct bench_thread *t)
{
    if (t->run->o->no_spin) {
        iop_loop_run(t->loop, IOP_RUN_DEFAULT);
        return;
    }
    uint64_t seen = t->done, since = bench_now();
    while (!t->finished) {
        if (iop_loop_run(t->loop, IOP_RUN_NOWAIT) < 0)
            return;
        uint64_t now = bench_now();
        if (t->done != seen || now - since < SPIN_NS) {
            since = t->done != seen ? now : since;
            seen = t->done;
            continue;
        }
        if (iop_loop_run(t->loop, IOP_RUN_ONCE) < 0)
            return;
        since = bench_now();
    }
}

static void thread_go(struct bench_thread *t)
{
    const struct bench_run *r = t->run;
    uint64_t now = bench_now(), end = t_end(r);
    t->started = 1;
    iop_timer_start(t->loop, &t->timer, end > now ? (end - now + 999999) / 1000000 : 0, 0);
    for (size_t i = t->nidle; i < t->nconns; i++) {
        struct bconn *c = bench_conn(t, i);
        c->next_due = r->t0 + (uint64_t)((double)c->id * r->step);
        bench_pump(c);
    }
    run_polling(t);
}

static void thread_teardown(struct bench_thread *t)
{
    if (!t->loop)
        return;
    iop_timer_stop(&t->timer);
    pthread_mutex_lock(&t->run->wake_mu);
    if (t->wake_live)
        iop_async_stop(&t->wake);
    t->wake_live = 0;
    pthread_mutex_unlock(&t->run->wake_mu);
    if (t->tfd >= 0) {
        iop_io_stop(&t->tio);
        close(t->tfd);
    }
    for (size_t i = 0; t->conns && i < t->nconns; i++)
        bench_close(bench_conn(t, i));
    /* Only the closing streams are left active: run until they are gone.  A
     * stop that finish() asked for during a NOWAIT run is still pending and
     * ends the first run at once, hence the second. */
    int rc = 1;
    for (int i = 0; rc > 0 && i < 3; i++)
        rc = iop_loop_run(t->loop, IOP_RUN_DEFAULT);
    if (t->run->proto->thread_fini)
        t->run->proto->thread_fini(t);
    if (t->ctx)
        iop_stream_ctx_free(t->ctx);
    iop_loop_free(t->loop);
    t->loop = NULL;
}

/* The start gate: every worker set up (or failed), then all go at once. */
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_ready, gate_open;

static void gate_pass(void)
{
    pthread_mutex_lock(&gate_mu);
    gate_ready++;
    pthread_cond_broadcast(&gate_cv);
    while (!gate_open)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
}

static void *thread_main(void *arg)
{
    struct bench_thread *t = arg;
    struct bench_run *r = t->run;
    int rc = thread_setup(t);
    if (rc < 0 && !t->setup_err)
        t->setup_err = rc;
    gate_pass();
    if (!t->setup_err && !atomic_load(&r->abort))
        thread_go(t);
    thread_teardown(t);
    uint64_t one = 1;
    if (write(r->done_fd, &one, sizeof one) < 0) {
        /* cannot happen with an eventfd this far from its limit */
    }
    return NULL;
}

/* ---- the main thread: the timeline ---------------------------------------------------- */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static long long proc_ticks(long pid, int depth);

/* Ticks of pid's children, grandchildren... (thread by thread: children
 * hang off the thread that forked them). */
static long long children_ticks(long pid, int depth)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    long long sum = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char cpath[320];
        long child;
        if (e->d_name[0] == '.')
            continue;
        snprintf(cpath, sizeof cpath, "/proc/%ld/task/%s/children", pid, e->d_name);
        FILE *f = fopen(cpath, "re");
        if (!f)
            continue;
        while (fscanf(f, "%ld", &child) == 1) {
            long long v = proc_ticks(child, depth + 1);
            sum += v > 0 ? v : 0;
        }
        fclose(f);
    }
    closedir(d);
    return sum;
}

/* CPU clock ticks (user + system) of pid, of the children it has reaped
 * (a fork-per-connection server's) and of those still running; -1 when
 * pid is gone. */
static long long proc_ticks(long pid, int depth)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the name may hold anything but ')' last */
    unsigned long long ut, st;
    long long cut, cst;
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld", &ut,
                     &st, &cut, &cst) != 4)
        return -1;
    long long total = (long long)(ut + st) + cut + cst;
    return depth < 8 ? total + children_ticks(pid, depth) : total;
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
    if (now < t_end(r))
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
    *ticks = r->o->server_pid ? proc_ticks(r->o->server_pid, 0) : -1;
}

static void timeline(struct bench_run *r, struct timeline *tl)
{
    tl->next_tick = r->t0 + NS;
    tl->prev_t = r->t0;
    while (tl->finished < r->nthreads) {
        uint64_t now = bench_now(), end = t_end(r), until = UINT64_MAX;
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
    int rc = iop_loop_new(&loop, r->kind, r->loop_flags);
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
        if (thread_conns(t, (uint32_t)fa, (uint32_t)(r->o->conns + (long)fi)) < 0 ||
            pthread_create(&t->tid, NULL, thread_main, t) != 0) {
            atomic_store(&r->abort, 1);
            if (!t->setup_err)
                t->setup_err = -ENOMEM;
            break;
        }
        started++;
    }
    return started;
}

/* Wait for every started worker at the gate; then fix the timeline (unless
 * a worker failed) and let them all go. */
static void open_gate(struct bench_run *r, int started)
{
    pthread_mutex_lock(&gate_mu);
    while (gate_ready < started)
        pthread_cond_wait(&gate_cv, &gate_mu);
    for (int i = 0; i < r->nthreads; i++)
        if (r->th[i].setup_err)
            atomic_store(&r->abort, 1);
    r->t0 = bench_now();
    r->t_meas = r->t0 + (uint64_t)(r->o->warmup * 1e9);
    atomic_store(&r->t_end, r->t_meas + (uint64_t)(r->o->duration * 1e9));
    gate_open = 1;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
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

static void err_kinds(const struct bench_totals *tot, FILE *f, int json);

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
        err_kinds(&tot, stderr, 0);
        fputc(')', stderr);
    }
    fputc('\n', stderr);
    return CLI_FAIL;
}

/* ---- the report ------------------------------------------------------------------------- */

static const char *const err_names[BE_COUNT] = {
    [BE_CONNECT] = "connect",         [BE_CLOSED] = "closed",
    [BE_MISMATCH] = "mismatch",       [BE_EXTRA] = "extra_bytes",
    [BE_IDLE] = "idle_broken",        [BE_UNANSWERED] = "unanswered",
    [BE_BAD_REPLY] = "bad_response",  [BE_SHORT_BODY] = "short_body",
    [BE_UNSUPPORTED] = "unsupported",
};

void bench_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

/* v with thousands separators and dec decimals: 1,234,567.8 */
static const char *grp(char *buf, double v, int dec)
{
    char tmp[48];
    snprintf(tmp, sizeof tmp, "%.*f", dec, v);
    size_t ilen = strcspn(tmp, "."), o = 0;
    for (size_t i = 0; i < ilen; i++) {
        if (i && tmp[i - 1] != '-' && (ilen - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = tmp[i];
    }
    strcpy(buf + o, tmp + ilen);
    return buf;
}

static void totals(const struct bench_run *r, const struct timeline *tl, struct bench_totals *tot)
{
    memset(tot, 0, sizeof *tot);
    hist_init(&tot->hist);
    for (int i = 0; i < r->nthreads; i++) {
        const struct bench_thread *t = &r->th[i];
        hist_merge(&tot->hist, &t->hist);
        tot->counted += t->counted;
        tot->bytes += t->bytes;
        tot->reopened += t->reopened;
        for (int k = 0; k < BE_COUNT; k++)
            tot->err[k] += t->err[k];
    }
    for (int k = 0; k < BE_COUNT; k++)
        tot->errors += tot->err[k];
    uint64_t end = t_end(r);
    tot->secs = end > r->t_meas ? (double)(end - r->t_meas) / 1e9 : 0;
    if (r->o->server_pid && tl->cpu0 >= 0 && tl->cpu1 >= tl->cpu0) {
        tot->server_cpu_s = (double)(tl->cpu1 - tl->cpu0) / (double)sysconf(_SC_CLK_TCK);
        tot->have_cpu = 1;
    }
}

static double rate_of(const struct bench_totals *tot)
{
    return tot->secs > 0 ? (double)tot->counted / tot->secs : 0;
}

/* "mismatch 2, closed 1" (or "" without errors), with sep between kinds */
static void err_kinds(const struct bench_totals *tot, FILE *f, int json)
{
    int n = 0;
    for (int k = 0; k < BE_COUNT; k++) {
        if (!tot->err[k])
            continue;
        if (json)
            fprintf(f, "%s\"%s\":%llu", n ? "," : "", err_names[k],
                    (unsigned long long)tot->err[k]);
        else
            fprintf(f, "%s%s %llu", n ? ", " : "", err_names[k], (unsigned long long)tot->err[k]);
        n++;
    }
}

static const char *backend_name(const struct bench_run *r)
{
    return r->th[0].backend_name ? r->th[0].backend_name : r->o->backend;
}

static void text_latency(const struct hist *h, FILE *f)
{
    static const double qs[] = {50, 90, 99, 99.9, 100};
    static const char *const names[] = {"p50", "p90", "p99", "p99.9", "max"};
    char b[64];
    fputs("  latency ", f);
    for (int i = 0; i < 5; i++)
        fprintf(f, "  %s %s", names[i], grp(b, (double)hist_percentile(h, qs[i]) / 1e3, 1));
    fprintf(f, " us  (mean %s)\n", grp(b, hist_mean(h) / 1e3, 1));
}

static void report_text(const struct bench_run *r, const struct bench_totals *tot, FILE *f)
{
    const struct bench_opts *o = r->o;
    const char *unit = r->proto->unit;
    char a[64], b[64], c[64];
    fprintf(f, "%s %s: %s\n", r->prog, o->target, r->what);
    fprintf(f, "  %ld connections (+%ld idle), %d thread%s, %s%s, ", o->conns, o->idle, r->nthreads,
            r->nthreads > 1 ? "s" : "", backend_name(r), o->edge ? " (edge)" : "");
    if (o->rate > 0)
        fprintf(f, "open loop at %s %s/s\n", grp(a, o->rate, 0), unit);
    else
        fputs("closed loop\n", f);
    fprintf(f, "  %.2f s counted after %.2f s warm-up\n", tot->secs, o->warmup);
    fprintf(f, "  %-10s%s   %s %s/s   %s MB/s\n", unit, grp(a, (double)tot->counted, 0),
            grp(b, rate_of(tot), 1), unit,
            grp(c, tot->secs > 0 ? (double)tot->bytes / tot->secs / 1e6 : 0, 2));
    text_latency(&tot->hist, f);
    fprintf(f, "  errors    %llu", (unsigned long long)tot->errors);
    if (tot->errors) {
        fputs(" (", f);
        err_kinds(tot, f, 0);
        fputc(')', f);
    }
    fputc('\n', f);
    if (r->proto->report)
        r->proto->report(r, 0, f);
    if (tot->have_cpu && tot->counted)
        fprintf(f, "  server    %.2f us CPU per %s (%.0f %% of a core)\n",
                tot->server_cpu_s * 1e6 / (double)tot->counted, r->proto->per,
                tot->secs > 0 ? tot->server_cpu_s / tot->secs * 100 : 0);
}

static void json_latency(const struct hist *h, FILE *f)
{
    fprintf(f,
            ",\"latency_us\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f,"
            "\"min\":%.3f,\"mean\":%.3f}",
            (double)hist_percentile(h, 50) / 1e3, (double)hist_percentile(h, 90) / 1e3,
            (double)hist_percentile(h, 99) / 1e3, (double)hist_percentile(h, 99.9) / 1e3,
            (double)h->max / 1e3, h->n ? (double)h->min / 1e3 : 0, hist_mean(h) / 1e3);
}

static void report_json(const struct bench_run *r, const struct bench_totals *tot, FILE *f)
{
    const struct bench_opts *o = r->o;
    fprintf(f, "{\"bench\":\"%s\",\"target\":", r->proto->name);
    bench_json_str(f, o->target);
    fprintf(f,
            ",\"backend\":\"%s\",\"edge\":%s,\"spin\":%s,\"threads\":%d,\"conns\":%ld,"
            "\"idle\":%ld",
            backend_name(r), o->edge ? "true" : "false", o->no_spin ? "false" : "true", r->nthreads,
            o->conns, o->idle);
    if (o->rate > 0)
        fprintf(f, ",\"rate_target\":%.3f", o->rate);
    else
        fputs(",\"rate_target\":null", f);
    fprintf(f, ",\"warmup_s\":%.3f,\"duration_s\":%.6f,\"%s\":%llu,\"rate\":%.3f,\"mb_per_s\":%.6f",
            o->warmup, tot->secs, r->proto->unit, (unsigned long long)tot->counted, rate_of(tot),
            tot->secs > 0 ? (double)tot->bytes / tot->secs / 1e6 : 0);
    json_latency(&tot->hist, f);
    fprintf(f, ",\"errors\":%llu,\"error_kinds\":{", (unsigned long long)tot->errors);
    err_kinds(tot, f, 1);
    fputc('}', f);
    if (r->proto->report)
        r->proto->report(r, 1, f);
    if (tot->have_cpu && tot->counted)
        fprintf(f, ",\"server_cpu_us_per_req\":%.4f,\"server_cpu_pct\":%.2f",
                tot->server_cpu_s * 1e6 / (double)tot->counted,
                tot->secs > 0 ? tot->server_cpu_s / tot->secs * 100 : 0);
    else if (o->server_pid)
        fputs(",\"server_cpu_us_per_req\":null,\"server_cpu_pct\":null", f);
    fputs("}\n", f);
}

static int report(const struct bench_run *r, const struct timeline *tl)
{
    struct bench_totals tot;
    totals(r, tl, &tot);
    if (r->o->json)
        report_json(r, &tot, stdout);
    else
        report_text(r, &tot, stdout);
    fflush(stdout);
    if (r->o->server_pid && !tot.have_cpu)
        fprintf(stderr, "%s: warning: no CPU figures for --server-pid %ld (gone?)\n", r->prog,
                r->o->server_pid);
    if (tot.errors) {
        fprintf(stderr, "%s: FAILED: %llu errors (", r->prog, (unsigned long long)tot.errors);
        err_kinds(&tot, stderr, 0);
        fputs(")\n", stderr);
        return CLI_FAIL;
    }
    if (!tot.counted) {
        fprintf(stderr, "%s: FAILED: no %s completed in the counted time\n", r->prog,
                r->proto->unit);
        return CLI_FAIL;
    }
    return CLI_OK;
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
    open_gate(&r, started);
    if (!atomic_load(&r.abort))
        timeline(&r, &tl);
    for (int i = 0; i < started; i++)
        pthread_join(r.th[i].tid, NULL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    int rc = atomic_load(&r.abort) ? setup_error(&r) : report(&r, &tl);
    close(r.done_fd);
    pthread_mutex_destroy(&r.wake_mu);
    free_threads(&r);
    iop_tls_ctx_free(r.tls);
    return rc;
}

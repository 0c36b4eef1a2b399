/* bench_common.c - the load generators' worker threads: time and --rate
 * pacing, accounting, connections, and each thread's loop (see
 * bench_common.h).  Options are in bench_opts.c, the main thread's timeline
 * in bench_run.c, /proc sampling in bench_proc.c, reports in
 * bench_report.c. */
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

#define MAX_CONNECTING 256   /* handshakes in flight per thread while setting up */
#define SETUP_MS       30000 /* connecting and proving live, at most */
#define NS             1000000000ull
#define SPIN_NS        20000 /* keep polling this long after the last answer */

/* ---- time and pacing ---------------------------------------------------------- */

uint64_t bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

uint64_t bench_t_end(const struct bench_run *r)
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
        if (now >= bench_t_end(r))
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
    if (now >= r->t_meas && now < bench_t_end(r)) {
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
    if (t->started && !t->stopping && bench_now() >= bench_t_end(t->run))
        end_of_window(t);
}

static int thread_loop(struct bench_thread *t)
{
    struct bench_run *r = t->run;
    int rc = iop_loop_new(r->kind, r->loop_flags, &t->loop);
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

int bench_thread_conns(struct bench_thread *t, uint32_t first_active, uint32_t first_idle)
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
    uint64_t now = bench_now(), end = bench_t_end(r);
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

void *bench_thread_main(void *arg)
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

/* Wait for every started worker at the gate; then fix the timeline (unless
 * a worker failed) and let them all go. */
void bench_gate_open(struct bench_run *r, int started)
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

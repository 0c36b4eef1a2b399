/* test_loop.c - the loop suite, run once per backend variant. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include "runner.h"

static void pair(int sv[2])
{
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
}

static void close_pair(int sv[2])
{
    close(sv[0]);
    close(sv[1]);
}

static int is_edge(const iop_loop *l, unsigned events)
{
    return (iop_loop_caps(l) & IOP_CAP_EDGE) &&
           ((events & IOP_EDGE) || ((iop_loop_flags(l) & IOP_LOOP_EDGE) && !(events & IOP_LEVEL)));
}

/* Drain fd to EAGAIN; returns bytes read. */
static int drain(int fd)
{
    char buf[4096];
    int total = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        total += (int)n;
    return total;
}

/* A few loop iterations, bounded by a short timer so none can block long. */
static void spin(iop_loop *l, int ms)
{
    long long end = iop_test_now_ms() + ms;
    while (iop_test_now_ms() < end) {
        CHECK(iop_loop_run(l, IOP_RUN_NOWAIT) >= 0);
        usleep(1000);
    }
}

/* ---- readiness -------------------------------------------------------- */

struct counter {
    iop_io io;
    int calls;
    unsigned last;
    int drain; /* read to EAGAIN in the callback */
    int got;
};

static void count_cb(iop_io *w, unsigned revents)
{
    struct counter *c = (struct counter *)w;
    c->calls++;
    c->last = revents;
    if (c->drain && (revents & IOP_READ))
        c->got += drain(w->fd);
}

IOP_TEST(readable_and_writable, be)
{
    iop_loop *l = iop_test_loop(be);
    int sv[2];
    pair(sv);
    struct counter c = {.drain = 1};
    iop_io_init(&c.io, sv[0], count_cb);
    CHECK_OK(iop_io_start(l, &c.io, IOP_READ));
    CHECK_EQ(iop_loop_run(l, IOP_RUN_NOWAIT), 1);
    CHECK_EQ(c.calls, 0);
    CHECK_EQ(write(sv[1], "abc", 3), 3);
    iop_test_run_until(l, &c.calls, 2000);
    CHECK(c.last & IOP_READ);
    CHECK_EQ(c.got, 3);

    /* A socket with room in its buffer is writable at once. */
    c.calls = 0;
    CHECK_OK(iop_io_modify(&c.io, IOP_WRITE));
    iop_test_run_until(l, &c.calls, 2000);
    CHECK(c.last & IOP_WRITE);
    CHECK(!(c.last & IOP_READ));
    iop_io_stop(&c.io);
    CHECK_EQ(iop_loop_alive(l), 0);
    close_pair(sv);
    iop_test_loop_free(l);
}

IOP_TEST(eof_and_hangup_are_readable, be)
{
    iop_loop *l = iop_test_loop(be);
    int sv[2];
    pair(sv);
    struct counter c = {0};
    iop_io_init(&c.io, sv[0], count_cb);
    CHECK_OK(iop_io_start(l, &c.io, IOP_READ));
    close(sv[1]);
    iop_test_run_until(l, &c.calls, 2000);
    CHECK(c.last & IOP_READ);
    char b;
    CHECK_EQ(read(sv[0], &b, 1), 0);
    iop_io_stop(&c.io);
    close(sv[0]);
    iop_test_loop_free(l);
}

IOP_TEST(level_repeats_until_read, be)
{
    iop_loop *l = iop_test_loop(be);
    int sv[2];
    pair(sv);
    struct counter c = {0};
    iop_io_init(&c.io, sv[0], count_cb);
    CHECK_OK(iop_io_start(l, &c.io, IOP_READ | IOP_LEVEL));
    CHECK_EQ(write(sv[1], "x", 1), 1);
    int target = 3;
    for (int i = 0; i < 100 && c.calls < target; i++)
        CHECK(iop_loop_run(l, IOP_RUN_ONCE) >= 0);
    CHECK(c.calls >= target); /* never read: level keeps telling */
    iop_io_stop(&c.io);
    close_pair(sv);
    iop_test_loop_free(l);
}

/* Edge: one report per readiness edge; nothing more until drained and new
 * data arrives.  Backends without IOP_CAP_EDGE keep level semantics. */
struct partial {
    iop_io io;
    int calls;
};

static void read_one_cb(iop_io *w, unsigned revents)
{
    struct partial *p = (struct partial *)w;
    char b;
    (void)revents;
    p->calls++;
    CHECK_EQ(read(w->fd, &b, 1), 1);
}

IOP_TEST(edge_no_repeat_until_eagain, be)
{
    iop_loop *l = iop_test_loop(be);
    int sv[2];
    pair(sv);
    struct partial p = {0};
    iop_io_init(&p.io, sv[0], read_one_cb);
    CHECK_OK(iop_io_start(l, &p.io, IOP_READ | IOP_EDGE));
    CHECK_EQ(write(sv[1], "xyz", 3), 3);
    iop_test_run_until(l, &p.calls, 2000);
    for (int i = 0; i < 5; i++) {
        CHECK(iop_loop_run(l, IOP_RUN_NOWAIT) >= 0);
        usleep(2000);
    }
    if (is_edge(l, IOP_EDGE)) {
        CHECK_EQ(p.calls, 1); /* two bytes left, but no new edge */
        char buf[8];
        CHECK_EQ(read(sv[0], buf, sizeof buf), 2);
        CHECK_EQ(read(sv[0], buf, sizeof buf), -1);
        CHECK_EQ(errno, EAGAIN);
        CHECK_EQ(write(sv[1], "w", 1), 1); /* a new edge */
        int before = p.calls;
        for (int i = 0; i < 200 && p.calls == before; i++)
            CHECK(iop_loop_run(l, IOP_RUN_ONCE) >= 0);
        CHECK_EQ(p.calls, before + 1);
    } else {
        CHECK_EQ(p.calls, 3); /* level: once per byte until empty */
    }
    iop_io_stop(&p.io);
    close_pair(sv);
    iop_test_loop_free(l);
}

/* ---- stopping from callbacks ------------------------------------------ */

struct killer {
    iop_io io;
    struct killer *victim;
    int calls;
    int stop_self;
};

static void killer_cb(iop_io *w, unsigned revents)
{
    struct killer *k = (struct killer *)w;
    (void)revents;
    k->calls++;
    if (k->victim) {
        iop_io_stop(&k->victim->io);
        /* Scribble over it: a stale pointer would call garbage. */
        memset(k->victim, 0xa5, sizeof *k->victim);
        k->victim = NULL;
    }
    if (k->stop_self) {
        iop_io_stop(w);
        free(k);
    }
}

IOP_TEST(stop_other_watcher_from_callback, be)
{
    iop_loop *l = iop_test_loop(be);
    int a[2], b[2];
    pair(a);
    pair(b);
    struct killer *ka = calloc(1, sizeof *ka), *kb = calloc(1, sizeof *kb);
    iop_io_init(&ka->io, a[0], killer_cb);
    iop_io_init(&kb->io, b[0], killer_cb);
    ka->victim = kb;
    kb->victim = ka;
    CHECK_OK(iop_io_start(l, &ka->io, IOP_READ | IOP_LEVEL));
    CHECK_OK(iop_io_start(l, &kb->io, IOP_READ | IOP_LEVEL));
    CHECK_EQ(write(a[1], "x", 1), 1);
    CHECK_EQ(write(b[1], "x", 1), 1);
    usleep(1000);
    /* Both are ready in the same wait; whichever runs first stops the other. */
    int n = 0;
    for (int i = 0; i < 20 && iop_loop_alive(l) == 2; i++)
        CHECK(iop_loop_run(l, IOP_RUN_ONCE) >= 0);
    CHECK_EQ(iop_loop_alive(l), 1);
    struct killer *survivor = ka->calls ? ka : kb;
    CHECK_EQ(survivor->calls, 1);
    n = survivor->calls;
    (void)n;
    iop_io_stop(&survivor->io);
    free(ka);
    free(kb);
    close_pair(a);
    close_pair(b);
    iop_test_loop_free(l);
}

IOP_TEST(stop_and_free_self_from_callback, be)
{
    iop_loop *l = iop_test_loop(be);
    int sv[2];
    pair(sv);
    struct killer *k = calloc(1, sizeof *k);
    k->stop_self = 1;
    iop_io_init(&k->io, sv[0], killer_cb);
    CHECK_OK(iop_io_start(l, &k->io, IOP_READ | IOP_WRITE));
    CHECK_EQ(write(sv[1], "x", 1), 1);
    for (int i = 0; i < 20 && iop_loop_alive(l); i++)
        CHECK(iop_loop_run(l, IOP_RUN_ONCE) >= 0);
    CHECK_EQ(iop_loop_alive(l), 0);
    spin(l, 20); /* no late report may reach the freed watcher */
    close_pair(sv);
    iop_test_loop_free(l);
}

/* Stop, close, and reuse the fd number for a new watcher, all in one
 * callback: the report about the old one must not reach the new one. */
struct reuse {
    iop_io a, b, fresh;
    int a_calls, b_calls, fresh_calls;
    int sv_b[2];
    int newpair[2];
};

static void reuse_fresh_cb(iop_io *w, unsigned revents)
{
    struct reuse *r = w->data;
    (void)revents;
    r->fresh_calls++;
}

static void reuse_a_cb(iop_io *w, unsigned revents)
{
    struct reuse *r = w->data;
    (void)revents;
    r->a_calls++;
    drain(w->fd);
    if (r->b.active) {
        int fd = r->b.fd;
        iop_io_stop(&r->b);
        close(fd);
        /* socketpair reuses the lowest free numbers: fd comes back. */
        CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, r->newpair) == 0);
        int newfd = r->newpair[0] == fd ? r->newpair[0] : r->newpair[1];
        iop_io_init(&r->fresh, newfd, reuse_fresh_cb);
        r->fresh.data = r;
        CHECK_OK(iop_io_start(w->loop, &r->fresh, IOP_READ));
    }
}

static void reuse_b_cb(iop_io *w, unsigned revents)
{
    struct reuse *r = w->data;
    (void)revents;
    r->b_calls++;
    drain(w->fd);
}

IOP_TEST(fd_reuse_in_callback_drops_stale_report, be)
{
    iop_loop *l = iop_test_loop(be);
    struct reuse r = {0};
    int sa[2];
    pair(sa);
    pair(r.sv_b);
    iop_io_init(&r.a, sa[0], reuse_a_cb);
    iop_io_init(&r.b, r.sv_b[0], reuse_b_cb);
    r.a.data = r.b.data = &r;
    CHECK_OK(iop_io_start(l, &r.a, IOP_READ));
    CHECK_OK(iop_io_start(l, &r.b, IOP_READ));
    CHECK_EQ(write(sa[1], "x", 1), 1);
    CHECK_EQ(write(r.sv_b[1], "x", 1), 1);
    iop_test_run_until(l, &r.a_calls, 2000);
    spin(l, 20);
    if (r.fresh.active) {
        CHECK_EQ(r.fresh_calls, 0); /* the new socket never had data */
        iop_io_stop(&r.fresh);
        close_pair(r.newpair);
    } else {
        CHECK_EQ(r.b_calls, 1); /* b ran first, so a found nothing to replace */
        iop_io_stop(&r.b);
        close(r.sv_b[0]);
    }
    iop_io_stop(&r.a);
    close_pair(sa);
    close(r.sv_b[1]);
    iop_test_loop_free(l);
}

IOP_TEST(watcher_errors, be)
{
    iop_loop *l = iop_test_loop(be);
    int sv[2];
    pair(sv);
    struct counter c = {0}, d = {0};
    iop_io_init(&c.io, sv[0], count_cb);
    iop_io_init(&d.io, sv[0], count_cb);
    CHECK_OK(iop_io_start(l, &c.io, IOP_READ));
    CHECK_EQ(iop_io_start(l, &c.io, IOP_READ), -EBUSY);
    CHECK_EQ(iop_io_start(l, &d.io, IOP_READ), -EEXIST);
    CHECK_EQ(iop_io_modify(&d.io, IOP_READ), -EINVAL);
    CHECK_EQ(iop_io_start(l, &d.io, 0x100), -EINVAL);
    iop_io_init(&d.io, -1, count_cb);
    CHECK_EQ(iop_io_start(l, &d.io, IOP_READ), -EBADF);
    iop_io_stop(&d.io); /* inactive: no-op */
    CHECK_EQ(iop_loop_free(l), -EBUSY);
    iop_io_stop(&c.io);
    /* Interest 0: the watcher holds the fd but nothing is asked. */
    CHECK_OK(iop_io_start(l, &c.io, 0));
    CHECK_EQ(write(sv[1], "x", 1), 1);
    spin(l, 10);
    CHECK_EQ(c.calls, 0);
    CHECK_OK(iop_io_modify(&c.io, IOP_READ));
    iop_test_run_until(l, &c.calls, 2000);
    iop_io_stop(&c.io);
    close_pair(sv);
    iop_test_loop_free(l);
}

/* ---- many fds ---------------------------------------------------------- */

#define MANY 9000

struct many {
    struct counter *c;
    int (*sv)[2];
    int n;
    int total;
};

static void many_cb(iop_io *w, unsigned revents)
{
    int *total = w->data;
    (void)revents;
    char b[16];
    if (read(w->fd, b, sizeof b) > 0)
        (*total)++;
}

IOP_TEST(many_fds, be)
{
    iop_loop *l = iop_test_loop(be);
    int n = MANY;
    int(*sv)[2] = calloc((size_t)n, sizeof *sv);
    iop_io *w = calloc((size_t)n, sizeof *w);
    int total = 0, started = 0;
    for (int i = 0; i < n; i++) {
        pair(sv[i]);
        iop_io_init(&w[i], sv[i][0], many_cb);
        w[i].data = &total;
        int rc = iop_io_start(l, &w[i], IOP_READ);
        if (sv[i][0] >= FD_SETSIZE && !(iop_loop_caps(l) & IOP_CAP_ANY_FD)) {
            CHECK_EQ(rc, -ERANGE); /* refused, and nothing was touched */
            CHECK(!w[i].active);
            continue;
        }
        CHECK_OK(rc);
        started++;
    }
    CHECK_EQ(iop_loop_alive(l), started);
    for (int i = 0; i < n; i++)
        if (w[i].active)
            CHECK_EQ(write(sv[i][1], "x", 1), 1);
    long long end = iop_test_now_ms() + 20000;
    while (total < started && iop_test_now_ms() < end)
        CHECK(iop_loop_run(l, IOP_RUN_ONCE) >= 0);
    CHECK_EQ(total, started);
    if (iop_loop_caps(l) & IOP_CAP_ANY_FD)
        CHECK_EQ(started, n);
    for (int i = 0; i < n; i++) {
        iop_io_stop(&w[i]);
        close_pair(sv[i]);
    }
    free(sv);
    free(w);
    iop_test_loop_free(l);
}

/* ---- timers ------------------------------------------------------------ */

struct tlog {
    iop_timer t[8];
    int order[16];
    int n;
};

static void log_cb(iop_timer *t)
{
    struct tlog *g = t->data;
    g->order[g->n++] = (int)(t - g->t);
}

IOP_TEST(timers_fire_in_order, be)
{
    iop_loop *l = iop_test_loop(be);
    struct tlog g = {0};
    static const int ms[] = {30, 10, 20, 10, 0, 40};
    for (int i = 0; i < 6; i++) {
        iop_timer_init(&g.t[i], log_cb);
        g.t[i].data = &g;
        CHECK_OK(iop_timer_start(l, &g.t[i], (uint64_t)ms[i], 0));
    }
    iop_timer_stop(&g.t[5]); /* cancelled: never fires */
    CHECK(!iop_timer_active(&g.t[5]));
    /* Due times count from the loop's cached clock, which may trail ours
     * by up to a millisecond of truncation. */
    long long t0 = (long long)iop_loop_now(l);
    CHECK_EQ(iop_loop_run(l, IOP_RUN_DEFAULT), 0);
    long long took = (long long)iop_loop_now(l) - t0;
    CHECK_EQ(g.n, 5);
    static const int want[] = {4, 1, 3, 2, 0};
    for (int i = 0; i < 5; i++)
        CHECK_EQ(g.order[i], want[i]);
    CHECK(took >= 30);
    CHECK(took < 1000);
    iop_test_loop_free(l);
}

struct rep {
    iop_timer t;
    int n;
};

static void rep_cb(iop_timer *t)
{
    struct rep *r = (struct rep *)t;
    if (++r->n == 3)
        iop_timer_stop(t);
}

IOP_TEST(timer_repeat_and_restart, be)
{
    iop_loop *l = iop_test_loop(be);
    struct rep r = {0};
    iop_timer_init(&r.t, rep_cb);
    CHECK_OK(iop_timer_start(l, &r.t, 5, 5));
    CHECK_EQ(iop_loop_run(l, IOP_RUN_DEFAULT), 0);
    CHECK_EQ(r.n, 3);

    /* Restarting moves the due time. */
    struct tlog g = {0};
    iop_timer_init(&g.t[0], log_cb);
    iop_timer_init(&g.t[1], log_cb);
    g.t[0].data = g.t[1].data = &g;
    CHECK_OK(iop_timer_start(l, &g.t[0], 5, 0));
    CHECK_OK(iop_timer_start(l, &g.t[1], 15, 0));
    CHECK_OK(iop_timer_start(l, &g.t[0], 30, 0));
    CHECK_EQ(iop_loop_run(l, IOP_RUN_DEFAULT), 0);
    CHECK_EQ(g.n, 2);
    CHECK_EQ(g.order[0], 1);
    CHECK_EQ(g.order[1], 0);
    iop_test_loop_free(l);
}

static void zero_again_cb(iop_timer *t)
{
    int *n = t->data;
    if (++*n < 3)
        CHECK_OK(iop_timer_start(t->loop, t, 0, 0));
}

IOP_TEST(timer_zero_rearm_waits_for_next_iteration, be)
{
    iop_loop *l = iop_test_loop(be);
    int n = 0;
    iop_timer t;
    iop_timer_init(&t, zero_again_cb);
    t.data = &n;
    CHECK_OK(iop_timer_start(l, &t, 0, 0));
    /* An iteration has two timer phases (before and after the poll), each
     * running only timers started before it began: one NOWAIT run cannot
     * spin on a timer that keeps re-arming itself at 0. */
    CHECK_EQ(iop_loop_run(l, IOP_RUN_NOWAIT), 1);
    CHECK_EQ(n, 2);
    CHECK_EQ(iop_loop_run(l, IOP_RUN_NOWAIT), 0);
    CHECK_EQ(n, 3);
    iop_test_loop_free(l);
}

static void heap_cb(iop_timer *t)
{
    uint64_t *last = t->data;
    CHECK(t->due >= *last);
    *last = t->due;
}

IOP_TEST(timer_heap_random, be)
{
    iop_loop *l = iop_test_loop(be);
    enum { N = 2000 };
    iop_timer *t = calloc(N, sizeof *t);
    uint64_t last = 0;
    unsigned seed = 12345;
    for (int i = 0; i < N; i++) {
        iop_timer_init(&t[i], heap_cb);
        t[i].data = &last;
        seed = seed * 1103515245u + 12345u;
        CHECK_OK(iop_timer_start(l, &t[i], (seed >> 16) % 50, 0));
    }
    for (int i = 0; i < N; i += 3)
        iop_timer_stop(&t[i]);
    CHECK_EQ(iop_loop_alive(l), N - (N + 2) / 3);
    CHECK_EQ(iop_loop_run(l, IOP_RUN_DEFAULT), 0);
    free(t);
    iop_test_loop_free(l);
}

/* ---- signals ----------------------------------------------------------- */

struct sig {
    iop_signal s;
    int calls, signum;
};

static void sig_cb(iop_signal *s, int signum)
{
    struct sig *g = (struct sig *)s;
    g->calls++;
    g->signum = signum;
}

IOP_TEST(signals_are_callbacks, be)
{
    iop_loop *l = iop_test_loop(be);
    struct sig a = {0}, b = {0};
    CHECK_OK(iop_signal_start(l, &a.s, SIGUSR1, sig_cb));
    CHECK_OK(iop_signal_start(l, &b.s, SIGUSR1, sig_cb));
    CHECK_EQ(iop_signal_start(l, &b.s, SIGKILL, sig_cb), -EINVAL);
    raise(SIGUSR1);
    raise(SIGUSR1); /* merged with the first if the loop has not run */
    iop_test_run_until(l, &a.calls, 2000);
    CHECK_EQ(a.signum, SIGUSR1);
    CHECK_EQ(b.calls, a.calls);

    /* Another loop cannot take the same signal. */
    iop_loop *other = iop_test_loop(be);
    struct sig c = {0};
    CHECK_EQ(iop_signal_start(other, &c.s, SIGUSR1, sig_cb), -EBUSY);
    iop_test_loop_free(other);

    iop_signal_stop(&a.s);
    iop_signal_stop(&b.s);
    struct sigaction now;
    CHECK(sigaction(SIGUSR1, NULL, &now) == 0);
    CHECK(now.sa_handler == SIG_DFL); /* the disposition is given back */
    iop_test_loop_free(l);
}

static int sig_total;

static void sig_stop_other_cb(iop_signal *s, int signum)
{
    (void)signum;
    sig_total++;
    iop_signal_stop(s->data);
    iop_signal_stop(s);
}

IOP_TEST(signal_stop_from_callback, be)
{
    iop_loop *l = iop_test_loop(be);
    iop_signal a, b;
    CHECK_OK(iop_signal_start(l, &a, SIGUSR2, sig_stop_other_cb));
    CHECK_OK(iop_signal_start(l, &b, SIGUSR2, sig_stop_other_cb));
    a.data = &b;
    b.data = &a;
    raise(SIGUSR2);
    iop_test_run_until(l, &sig_total, 2000);
    spin(l, 10);
    CHECK_EQ(sig_total, 1); /* the first stopped the second before it ran */
    CHECK_EQ(iop_loop_alive(l), 0);
    iop_test_loop_free(l);
}

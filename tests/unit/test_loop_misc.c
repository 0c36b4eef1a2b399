/* test_loop_misc.c - deferred callbacks, run modes, freeing, backend choice
 * and names, run once per backend variant. */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
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

static void never_cb(iop_io *w, unsigned revents)
{
    (void)w;
    (void)revents;
    iop_test_fail(__FILE__, __LINE__, "no event was due");
}

/* An fd watcher that keeps the loop alive and never fires: a wait with
 * nothing else to do would block forever (the test's alarm ends it). */
struct idle {
    iop_io w;
    int sv[2];
};

static void idle_start(iop_loop *l, struct idle *i)
{
    pair(i->sv);
    iop_io_init(&i->w, i->sv[0], never_cb);
    CHECK_OK(iop_io_start(l, &i->w, IOP_READ));
}

static void idle_stop(struct idle *i)
{
    iop_io_stop(&i->w);
    close_pair(i->sv);
}

static void flag_cb(iop_timer *t)
{
    *(int *)t->data = 1;
}

/* A timer that ends a wait the test expects not to happen at all. */
static void guard_start(iop_loop *l, iop_timer *guard, int *fired)
{
    iop_timer_init(guard, flag_cb);
    guard->data = fired;
    CHECK_OK(iop_timer_start(l, guard, 1000, 0));
}

/* ---- deferred callbacks ------------------------------------------------ */

struct dcount {
    iop_defer d;
    int calls;
    int again;         /* queue itself again this many times */
    iop_defer *victim; /* cancelled by the callback */
    iop_defer *spawn;  /* queued by the callback */
    iop_defer_cb spawn_cb;
};

static void dcount_cb(iop_defer *d)
{
    struct dcount *c = (struct dcount *)d;
    c->calls++;
    if (c->victim)
        iop_defer_cancel(c->victim);
    if (c->spawn)
        CHECK_OK(iop_defer_start(d->loop, c->spawn, c->spawn_cb));
    if (c->again > 0) {
        c->again--;
        CHECK_OK(iop_defer_start(d->loop, d, dcount_cb));
    }
}

/* Logs the order of callbacks of different kinds. */
struct order {
    iop_timer t;
    iop_defer d;
    char log[16];
    int n;
    int timer_fired;
};

static void order_defer_cb(iop_defer *d)
{
    struct order *o = d->data;
    o->log[o->n++] = 'd';
}

static void order_timer_cb(iop_timer *t)
{
    struct order *o = t->data;
    o->log[o->n++] = 't';
    o->timer_fired = 1;
    /* Queued after the wait: runs before the next one. */
    CHECK_OK(iop_defer_start(t->loop, &o->d, order_defer_cb));
}

IOP_TEST(defer_runs_before_next_wait, be)
{
    iop_loop *l = iop_test_loop(be);
    struct idle idle;
    idle_start(l, &idle);
    struct order o = {0};
    iop_timer_init(&o.t, order_timer_cb);
    o.t.data = o.d.data = &o;
    CHECK_OK(iop_defer_start(l, &o.d, order_defer_cb));
    iop_loop_update_time(l); /* the timer must not be due at once */
    CHECK_OK(iop_timer_start(l, &o.t, 50, 0));
    CHECK_EQ(iop_loop_alive(l), 3);
    /* The defer runs first, then the loop waits for the timer. */
    CHECK_EQ(iop_loop_run(l, IOP_RUN_ONCE), 1);
    CHECK(!strcmp(o.log, "dt"));
    /* The timer queued it again: the next iteration runs it before it
     * waits for the timer again. */
    o.timer_fired = 0;
    CHECK_OK(iop_timer_start(l, &o.t, 30, 0));
    iop_test_run_until(l, &o.timer_fired, 2000);
    CHECK(!strcmp(o.log, "dtdt"));
    iop_defer_cancel(&o.d);
    CHECK_EQ(iop_loop_alive(l), 1);
    idle_stop(&idle);
    iop_test_loop_free(l);
}

IOP_TEST(defer_queued_twice_runs_once, be)
{
    iop_loop *l = iop_test_loop(be);
    struct dcount c = {0};
    CHECK_OK(iop_defer_start(l, &c.d, dcount_cb));
    CHECK_OK(iop_defer_start(l, &c.d, dcount_cb));
    CHECK_EQ(iop_loop_alive(l), 1);
    CHECK_EQ(iop_loop_run(l, IOP_RUN_NOWAIT), 0);
    CHECK_EQ(c.calls, 1);
    CHECK_EQ(iop_loop_run(l, IOP_RUN_NOWAIT), 0);
    CHECK_EQ(c.calls, 1);
    iop_test_loop_free(l);
}

IOP_TEST(defer_from_defer_runs_next_iteration, be)
{
    iop_loop *l = iop_test_loop(be);
    struct idle idle;
    idle_start(l, &idle);
    int fired = 0;
    iop_timer guard;
    guard_start(l, &guard, &fired);
    struct dcount c = {.again = 1000};
    CHECK_OK(iop_defer_start(l, &c.d, dcount_cb));
    long long t0 = iop_test_now_ms();
    /* One run per iteration: the requeue waits for the next one, and the
     * loop does not block meanwhile although the watcher never fires. */
    for (int i = 1; i <= 4; i++) {
        CHECK_EQ(iop_loop_run(l, IOP_RUN_ONCE), 1);
        CHECK_EQ(c.calls, i);
    }
    CHECK(iop_test_now_ms() - t0 < 500);
    CHECK(!fired);
    iop_defer_cancel(&c.d);
    iop_timer_stop(&guard);
    CHECK_EQ(iop_loop_alive(l), 1); /* the watcher only */
    idle_stop(&idle);
    iop_test_loop_free(l);
}

IOP_TEST(defer_cancel, be)
{
    iop_loop *l = iop_test_loop(be);
    struct dcount a = {0}, b = {0};
    CHECK_OK(iop_defer_start(l, &a.d, dcount_cb));
    CHECK_OK(iop_defer_start(l, &b.d, dcount_cb));
    iop_defer_cancel(&a.d);
    iop_defer_cancel(&a.d); /* not queued: a no-op */
    CHECK_EQ(iop_loop_alive(l), 1);
    CHECK_EQ(iop_loop_run(l, IOP_RUN_NOWAIT), 0);
    CHECK_EQ(a.calls, 0);
    CHECK_EQ(b.calls, 1);
    /* Cancelled, it can be queued again. */
    CHECK_OK(iop_defer_start(l, &a.d, dcount_cb));
    CHECK_EQ(iop_loop_run(l, IOP_RUN_NOWAIT), 0);
    CHECK_EQ(a.calls, 1);
    iop_test_loop_free(l);
}

IOP_TEST(defer_cancel_from_another_defer, be)
{
    iop_loop *l = iop_test_loop(be);
    struct dcount a = {0}, b = {0}, c = {0};
    a.victim = &b.d;
    CHECK_OK(iop_defer_start(l, &a.d, dcount_cb));
    CHECK_OK(iop_defer_start(l, &b.d, dcount_cb));
    CHECK_OK(iop_defer_start(l, &c.d, dcount_cb));
    CHECK_EQ(iop_loop_run(l, IOP_RUN_NOWAIT), 0);
    CHECK_EQ(a.calls, 1);
    CHECK_EQ(b.calls, 0);
    CHECK_EQ(c.calls, 1);
    CHECK_EQ(iop_loop_alive(l), 0);
    iop_test_loop_free(l);
}

IOP_TEST(defer_cancel_last_then_queue_from_defer, be)
{
    iop_loop *l = iop_test_loop(be);
    struct idle idle;
    idle_start(l, &idle);
    /* a cancels b, the last one queued before the phase began, and queues
     * c, which queues itself again and again.  c still belongs to the next
     * iteration, once per iteration: the phase must end. */
    struct dcount a = {0}, b = {0}, c = {.again = 1000};
    a.victim = &b.d;
    a.spawn = &c.d;
    a.spawn_cb = dcount_cb;
    int fired = 0;
    iop_timer guard;
    guard_start(l, &guard, &fired);
    CHECK_OK(iop_defer_start(l, &a.d, dcount_cb));
    CHECK_OK(iop_defer_start(l, &b.d, dcount_cb));
    CHECK_EQ(iop_loop_run(l, IOP_RUN_ONCE), 1);
    CHECK_EQ(a.calls, 1);
    CHECK_EQ(b.calls, 0);
    CHECK_EQ(c.calls, 0);
    CHECK_EQ(iop_loop_run(l, IOP_RUN_ONCE), 1);
    CHECK_EQ(c.calls, 1);
    CHECK(!fired);
    iop_defer_cancel(&c.d);
    iop_timer_stop(&guard);
    CHECK_EQ(iop_loop_alive(l), 1);
    idle_stop(&idle);
    iop_test_loop_free(l);
}

/* ---- run modes --------------------------------------------------------- */

IOP_TEST(run_nowait_never_blocks, be)
{
    iop_loop *l = iop_test_loop(be);
    struct idle idle;
    idle_start(l, &idle);
    int fired = 0;
    iop_timer t;
    iop_timer_init(&t, flag_cb);
    t.data = &fired;
    CHECK_OK(iop_timer_start(l, &t, 10000, 0));
    for (int i = 0; i < 3; i++) {
        long long t0 = iop_test_now_ms();
        CHECK_EQ(iop_loop_run(l, IOP_RUN_NOWAIT), 1);
        CHECK(iop_test_now_ms() - t0 < 50);
    }
    CHECK(!fired);
    iop_timer_stop(&t);
    idle_stop(&idle);
    iop_test_loop_free(l);
}

/* Stops a loop that blocks although it should not, so that a regression
 * fails in seconds instead of at the runner's timeout. */
struct watchdog {
    iop_loop *l;
    pthread_t th;
    atomic_int done, bit;
};

static void *watchdog_thread(void *arg)
{
    struct watchdog *w = arg;
    for (int i = 0; i < 200 && !atomic_load(&w->done); i++)
        usleep(10000);
    if (!atomic_load(&w->done)) {
        atomic_store(&w->bit, 1);
        iop_loop_stop(w->l);
    }
    return NULL;
}

static void watchdog_start(struct watchdog *w, iop_loop *l)
{
    w->l = l;
    atomic_store(&w->done, 0);
    atomic_store(&w->bit, 0);
    CHECK(pthread_create(&w->th, NULL, watchdog_thread, w) == 0);
}

/* Returns whether the watchdog had to stop the loop. */
static int watchdog_stop(struct watchdog *w)
{
    atomic_store(&w->done, 1);
    CHECK(pthread_join(w->th, NULL) == 0);
    return atomic_load(&w->bit);
}

IOP_TEST(run_returns_when_nothing_active, be)
{
    iop_loop *l = iop_test_loop(be);
    CHECK_EQ(iop_loop_alive(l), 0);
    struct watchdog wd;
    watchdog_start(&wd, l);
    long long t0 = iop_test_now_ms();
    CHECK_EQ(iop_loop_run(l, IOP_RUN_DEFAULT), 0);
    /* ONCE waits for an event, but none can come: it must not block. */
    CHECK_EQ(iop_loop_run(l, IOP_RUN_ONCE), 0);
    CHECK_EQ(iop_loop_run(l, IOP_RUN_NOWAIT), 0);
    long long took = iop_test_now_ms() - t0;
    CHECK(!watchdog_stop(&wd));
    CHECK(took < 500);
    iop_test_loop_free(l);
}

struct nested {
    iop_io w;
    int rc[3];
    int done;
};

static void nested_cb(iop_io *w, unsigned revents)
{
    struct nested *n = (struct nested *)w;
    char c;
    (void)revents;
    CHECK_EQ(read(w->fd, &c, 1), 1);
    n->rc[0] = iop_loop_run(w->loop, IOP_RUN_DEFAULT);
    n->rc[1] = iop_loop_run(w->loop, IOP_RUN_ONCE);
    n->rc[2] = iop_loop_run(w->loop, IOP_RUN_NOWAIT);
    /* Not re-entrant, and freeing is refused while it runs. */
    CHECK_EQ(iop_loop_free(w->loop), -EBUSY);
    n->done = 1;
    iop_io_stop(w);
}

IOP_TEST(run_from_callback_is_busy, be)
{
    iop_loop *l = iop_test_loop(be);
    int sv[2];
    pair(sv);
    struct nested n = {0};
    iop_io_init(&n.w, sv[0], nested_cb);
    CHECK_OK(iop_io_start(l, &n.w, IOP_READ));
    CHECK_EQ(write(sv[1], "x", 1), 1);
    iop_test_run_until(l, &n.done, 2000);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(n.rc[i], -EBUSY);
    /* The outer run is unharmed. */
    CHECK_EQ(iop_loop_run(l, IOP_RUN_DEFAULT), 0);
    close_pair(sv);
    iop_test_loop_free(l);
}

IOP_TEST(stop_before_run_ends_default_after_one_iteration, be)
{
    iop_loop *l = iop_test_loop(be);
    struct idle idle;
    idle_start(l, &idle);
    int fired = 0;
    iop_timer guard;
    iop_timer_init(&guard, flag_cb);
    guard.data = &fired;
    CHECK_OK(iop_timer_start(l, &guard, 2000, 0));
    iop_loop_stop(l);
    long long t0 = iop_test_now_ms();
    CHECK_EQ(iop_loop_run(l, IOP_RUN_DEFAULT), 1);
    CHECK(iop_test_now_ms() - t0 < 500);
    CHECK(!fired);
    /* The stop is spent: the next DEFAULT run goes on until the guard. */
    iop_timer_stop(&guard);
    CHECK_OK(iop_timer_start(l, &guard, 20, 0));
    struct dcount d = {0};
    CHECK_OK(iop_defer_start(l, &d.d, dcount_cb));
    iop_test_run_until(l, &fired, 2000);
    CHECK_EQ(d.calls, 1);
    idle_stop(&idle);
    iop_test_loop_free(l);
}

/* ---- freeing ----------------------------------------------------------- */

static void timer_nop(iop_timer *t)
{
    (void)t;
}

static void defer_nop(iop_defer *d)
{
    (void)d;
}

static void async_nop(iop_async *a)
{
    (void)a;
}

static void signal_nop(iop_signal *s, int signum)
{
    (void)s;
    (void)signum;
}

IOP_TEST(free_refused_while_active, be)
{
    for (int kind = 0; kind < 4; kind++) {
        iop_loop *l = iop_test_loop(be);
        iop_timer t;
        iop_defer d;
        iop_async a;
        iop_signal s;
        memset(&d, 0, sizeof d);
        memset(&a, 0, sizeof a);
        memset(&s, 0, sizeof s);
        switch (kind) {
        case 0:
            iop_timer_init(&t, timer_nop);
            CHECK_OK(iop_timer_start(l, &t, 60000, 0));
            break;
        case 1:
            CHECK_OK(iop_defer_start(l, &d, defer_nop));
            break;
        case 2:
            CHECK_OK(iop_async_start(l, &a, async_nop));
            break;
        case 3:
            CHECK_OK(iop_signal_start(l, &s, SIGUSR1, signal_nop));
            break;
        }
        CHECK_EQ(iop_loop_alive(l), 1);
        CHECK_EQ(iop_loop_free(l), -EBUSY);
        CHECK_EQ(iop_loop_run(l, IOP_RUN_NOWAIT), kind != 1); /* still usable */
        switch (kind) {
        case 0:
            iop_timer_stop(&t);
            break;
        case 1:
            iop_defer_cancel(&d); /* ran already: a no-op */
            break;
        case 2:
            iop_async_stop(&a);
            break;
        case 3:
            iop_signal_stop(&s);
            break;
        }
        CHECK_EQ(iop_loop_alive(l), 0);
        iop_test_loop_free(l);
    }
    CHECK_EQ(iop_loop_free(NULL), 0);
}

/* ---- backends: names, parsing, choice ---------------------------------- */

IOP_TEST(backend_parse, be)
{
    (void)be;
    CHECK_EQ(iop_backend_parse("auto"), IOP_BACKEND_AUTO);
    CHECK_EQ(iop_backend_parse("select"), IOP_BACKEND_SELECT);
    CHECK_EQ(iop_backend_parse("poll"), IOP_BACKEND_POLL);
    CHECK_EQ(iop_backend_parse("epoll"), IOP_BACKEND_EPOLL);
    CHECK_EQ(iop_backend_parse("uring"), IOP_BACKEND_URING);
    CHECK_EQ(iop_backend_parse("io_uring"), IOP_BACKEND_URING);
    CHECK_EQ(iop_backend_parse("kqueue"), -EINVAL);
    CHECK_EQ(iop_backend_parse(""), -EINVAL);
    CHECK_EQ(iop_backend_parse("epoll "), -EINVAL);
    CHECK_EQ(iop_backend_parse(NULL), -EINVAL);
    iop_loop *l = NULL;
    CHECK_EQ(iop_loop_new(99, 0, &l), -EINVAL);
    CHECK_EQ(iop_loop_new(-EINVAL, 0, &l), -EINVAL);
    CHECK_EQ(iop_loop_new(IOP_BACKEND_POLL, 0x80, &l), -EINVAL);
    CHECK_EQ(iop_loop_new(IOP_BACKEND_POLL, 0, NULL), -EINVAL);
    CHECK(l == NULL);
}

IOP_TEST(strerror_words, be)
{
    (void)be;
    const char *s = iop_strerror(-EAGAIN);
    CHECK(s != NULL && s[0] != '\0');
    CHECK(!strcmp(s, iop_strerror(EAGAIN))); /* either sign */
    CHECK(strcmp(s, iop_strerror(-EINVAL)) != 0);
    s = iop_strerror(0);
    CHECK(s != NULL && s[0] != '\0');
    s = iop_strerror(-1000000); /* unknown: still words */
    CHECK(s != NULL && s[0] != '\0');
    CHECK(iop_version() != NULL && iop_version()[0] != '\0');
}

IOP_TEST(backend_names_and_caps, be)
{
    static const char *names[] = {
        [IOP_BACKEND_SELECT] = "select",
        [IOP_BACKEND_POLL] = "poll",
        [IOP_BACKEND_EPOLL] = "epoll",
        [IOP_BACKEND_URING] = "uring",
    };
    iop_loop *l = iop_test_loop(be);
    CHECK(!strcmp(iop_loop_backend(l), names[be->kind]));
    CHECK_EQ(iop_loop_flags(l), be->flags);
    unsigned caps = iop_loop_caps(l);
    CHECK(caps & IOP_CAP_LEVEL);
    CHECK_EQ(!!(caps & IOP_CAP_EDGE),
             be->kind == IOP_BACKEND_EPOLL || be->kind == IOP_BACKEND_URING);
    CHECK_EQ(!!(caps & IOP_CAP_COMPLETION), be->kind == IOP_BACKEND_URING);
    CHECK_EQ(!!(caps & IOP_CAP_ANY_FD), be->kind != IOP_BACKEND_SELECT);
    iop_test_loop_free(l);
}

IOP_TEST(edge_needs_an_edge_backend, be)
{
    (void)be;
    iop_loop *l = NULL;
    CHECK_EQ(iop_loop_new(IOP_BACKEND_SELECT, IOP_LOOP_EDGE, &l), -ENOTSUP);
    CHECK_EQ(iop_loop_new(IOP_BACKEND_POLL, IOP_LOOP_EDGE, &l), -ENOTSUP);
    CHECK(l == NULL);
    CHECK_OK(iop_loop_new(IOP_BACKEND_AUTO, IOP_LOOP_EDGE, &l));
    CHECK(iop_loop_caps(l) & IOP_CAP_EDGE);
    CHECK_EQ(iop_loop_flags(l), IOP_LOOP_EDGE);
    iop_test_loop_free(l);
}

IOP_TEST(auto_prefers_uring, be)
{
    (void)be;
    /* uring where this kernel allows it (it does on the development and CI
     * machines), else epoll. */
    iop_loop *u = NULL, *l = NULL;
    int uring_rc = iop_loop_new(IOP_BACKEND_URING, 0, &u);
    iop_test_loop_free(u);
    CHECK_OK(iop_loop_new(IOP_BACKEND_AUTO, 0, &l));
    CHECK(!strcmp(iop_loop_backend(l), uring_rc == 0 ? "uring" : "epoll"));
    iop_test_loop_free(l);
}

/* ---- io_uring refused by seccomp --------------------------------------- */

#if defined(__x86_64__)
#define SECCOMP_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define SECCOMP_ARCH AUDIT_ARCH_AARCH64
#endif

#ifdef SECCOMP_ARCH
/* io_uring_setup fails with EPERM, as under Docker's default profile;
 * everything else is allowed (other architectures too: a test, not a
 * policy). */
static int deny_io_uring_setup(void)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SECCOMP_ARCH, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof filter / sizeof filter[0], .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -errno;
    if (syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0)
        return -errno;
    return 0;
}

/* In the child: the filter is for life, so it gets a process of its own. */
static void seccomp_child(void)
{
    int rc = deny_io_uring_setup();
    if (rc < 0) {
        fprintf(stderr, "seccomp: %s\n", iop_strerror(rc));
        _exit(77);
    }
    iop_loop *l = NULL;
    CHECK_EQ(iop_loop_new(IOP_BACKEND_URING, 0, &l), -EPERM);
    CHECK(l == NULL);
    CHECK_EQ(iop_loop_new(IOP_BACKEND_URING, IOP_LOOP_EDGE, &l), -EPERM);
    CHECK_OK(iop_loop_new(IOP_BACKEND_AUTO, 0, &l));
    CHECK(!strcmp(iop_loop_backend(l), "epoll"));
    iop_test_loop_free(l);
    CHECK_OK(iop_loop_new(IOP_BACKEND_AUTO, IOP_LOOP_EDGE, &l));
    CHECK(!strcmp(iop_loop_backend(l), "epoll"));
    iop_test_loop_free(l);
    _exit(0);
}

IOP_TEST(uring_refused_by_seccomp, be)
{
    /* Backend independent: once is enough. */
    if (be->kind != IOP_BACKEND_EPOLL || be->flags)
        IOP_SKIP("runs on the epoll variant only");
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0)
        seccomp_child();
    int status = 0;
    long long end = iop_test_now_ms() + 5000;
    pid_t got;
    while ((got = waitpid(pid, &status, WNOHANG)) == 0 && iop_test_now_ms() < end)
        usleep(2000);
    if (got == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        iop_test_fail(__FILE__, __LINE__, "seccomp child timed out");
    }
    CHECK_EQ(got, pid);
    CHECK(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77)
        IOP_SKIP("cannot install a seccomp filter here");
    CHECK_EQ(WEXITSTATUS(status), 0);
}
#endif

/* ---- the clock after a wait ------------------------------------------------ */

struct late {
    iop_io io;
    iop_timer t;
    iop_loop *loop;
    long long started, fired;
};

static void late_timer(iop_timer *t)
{
    struct late *s = t->data;
    s->fired = iop_test_now_ms();
}

static void late_io(iop_io *w, unsigned revents)
{
    (void)revents;
    struct late *s = (struct late *)w;
    char c;
    CHECK(read(w->fd, &c, 1) == 1);
    iop_io_stop(w);
    s->started = iop_test_now_ms();
    CHECK_OK(iop_timer_start(s->loop, &s->t, 100, 0));
}

static void *write_later(void *arg)
{
    usleep(200000);
    CHECK(write(*(int *)arg, "x", 1) == 1);
    return NULL;
}

/* A timer started by a callback that ran after a long wait counts from when
 * the callback ran, not from before the wait (the cached clock is renewed
 * when the wait returns). */
IOP_TEST(timer_after_long_wait_is_not_early, be)
{
    iop_loop *l = iop_test_loop(be);
    int sv[2];
    pair(sv);
    struct late s = {.loop = l};
    iop_io_init(&s.io, sv[0], late_io);
    iop_timer_init(&s.t, late_timer);
    s.t.data = &s;
    CHECK_OK(iop_io_start(l, &s.io, IOP_READ));
    pthread_t th;
    CHECK(pthread_create(&th, NULL, write_later, &sv[1]) == 0);
    CHECK_EQ(iop_loop_run(l, IOP_RUN_DEFAULT), 0);
    pthread_join(th, NULL);
    CHECK(s.fired - s.started >= 95);
    close_pair(sv);
    iop_test_loop_free(l);
}

/* test_thread_wakeup.c - iop_async_send() and iop_loop_stop() across
 * threads, run once per backend variant.  This is the ThreadSanitizer set
 * (ctest -L thread): every cross-thread access here goes through atomics or
 * the library's thread-safe calls. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
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

/* A few non-blocking iterations with a pause between them. */
static void spin(iop_loop *l, int ms)
{
    long long end = iop_test_now_ms() + ms;
    while (iop_test_now_ms() < end) {
        CHECK(iop_loop_run(l, IOP_RUN_NOWAIT) >= 0);
        usleep(1000);
    }
}

static void tick_cb(iop_timer *t)
{
    (void)t; /* only bounds each blocking wait */
}

/* ---- many senders ------------------------------------------------------ */

#define SENDERS 4
#define SENDS   10000

struct flood {
    iop_async a;
    atomic_int sent;     /* incremented before each send */
    atomic_int finished; /* sender threads done */
    /* loop thread only */
    int calls;
    int observed; /* sent as the last callback saw it */
    int all_seen; /* observed == SENDERS * SENDS */
};

static void flood_cb(iop_async *a)
{
    struct flood *f = (struct flood *)a;
    int seen = atomic_load(&f->sent);
    CHECK(seen >= f->observed); /* the counter only grows */
    f->observed = seen;
    f->calls++;
    f->all_seen = seen == SENDERS * SENDS;
}

static void *flood_thread(void *arg)
{
    struct flood *f = arg;
    for (int i = 0; i < SENDS; i++) {
        atomic_fetch_add(&f->sent, 1);
        if (iop_async_send(&f->a) != 0)
            abort(); /* no CHECK off the test's thread: it would _exit quietly */
    }
    atomic_fetch_add(&f->finished, 1);
    return NULL;
}

IOP_TEST(async_send_from_many_threads, be)
{
    iop_loop *l = iop_test_loop(be);
    struct flood f;
    memset(&f, 0, sizeof f);
    CHECK_OK(iop_async_start(l, &f.a, flood_cb));
    /* Keeps each blocking wait short while the senders run, so that the
     * loop notices they are done even if their last wakeup was consumed. */
    iop_timer tick;
    iop_timer_init(&tick, tick_cb);
    CHECK_OK(iop_timer_start(l, &tick, 5, 5));

    pthread_t th[SENDERS];
    for (int i = 0; i < SENDERS; i++)
        CHECK(pthread_create(&th[i], NULL, flood_thread, &f) == 0);
    long long end = iop_test_now_ms() + 20000;
    while (atomic_load(&f.finished) < SENDERS && iop_test_now_ms() < end)
        CHECK(iop_loop_run(l, IOP_RUN_ONCE) >= 0);
    for (int i = 0; i < SENDERS; i++)
        CHECK(pthread_join(th[i], NULL) == 0);
    iop_timer_stop(&tick);

    /* Every send happened after its increment: the last one left a wakeup
     * (or a callback already saw the final count).  Nothing is lost. */
    iop_test_run_until(l, &f.all_seen, 2000);
    CHECK_EQ(f.observed, SENDERS * SENDS);
    CHECK(f.calls >= 1);
    CHECK(f.calls <= SENDERS * SENDS);

    /* Nothing more is owed.  One call may still come: a sender's last
     * increment can be seen by a callback that runs before that sender's
     * iop_async_send, whose wakeup then owes one more (empty) call.  After
     * that, none. */
    spin(l, 10);
    int calls = f.calls;
    spin(l, 10);
    CHECK_EQ(f.calls, calls);
    iop_async_stop(&f.a);
    iop_test_loop_free(l);
}

/* ---- iop_loop_stop from another thread -------------------------------- */

struct stopper {
    iop_loop *l;
    atomic_int entered; /* the loop thread is about to block */
};

static void *stop_thread(void *arg)
{
    struct stopper *s = arg;
    while (!atomic_load(&s->entered))
        usleep(1000);
    usleep(50000); /* give the loop time to block in the kernel */
    iop_loop_stop(s->l);
    return NULL;
}

static void guard_cb(iop_timer *t)
{
    int *fired = t->data;
    *fired = 1;
    iop_loop_stop(t->loop);
}

static void never_cb(iop_io *w, unsigned revents)
{
    (void)w;
    (void)revents;
    iop_test_fail(__FILE__, __LINE__, "no event was due");
}

IOP_TEST(loop_stop_from_other_thread, be)
{
    iop_loop *l = iop_test_loop(be);
    int sv[2];
    pair(sv);
    iop_io w;
    iop_io_init(&w, sv[0], never_cb);
    CHECK_OK(iop_io_start(l, &w, IOP_READ)); /* active, never ready */
    /* Bounds the run if the stop were lost; must not be what ends it. */
    int guard_fired = 0;
    iop_timer guard;
    iop_timer_init(&guard, guard_cb);
    guard.data = &guard_fired;
    CHECK_OK(iop_timer_start(l, &guard, 2500, 0));

    struct stopper s = {.l = l};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, stop_thread, &s) == 0);
    long long t0 = iop_test_now_ms();
    atomic_store(&s.entered, 1);
    CHECK_EQ(iop_loop_run(l, IOP_RUN_DEFAULT), 1); /* still active */
    long long took = iop_test_now_ms() - t0;
    CHECK(pthread_join(th, NULL) == 0);
    CHECK(!guard_fired);
    CHECK(took >= 40);
    CHECK(took < 2000);

    /* The stop was used up: a later NOWAIT run is an ordinary one. */
    CHECK_EQ(iop_loop_run(l, IOP_RUN_NOWAIT), 1);
    iop_timer_stop(&guard);
    iop_io_stop(&w);
    close_pair(sv);
    iop_test_loop_free(l);
}

/* ---- stopping asyncs from callbacks ----------------------------------- */

struct self_stop {
    iop_async a;
    int calls;
    int send_rc; /* iop_async_send() right after the stop */
};

static void self_stop_cb(iop_async *a)
{
    struct self_stop *s = (struct self_stop *)a;
    s->calls++;
    iop_async_stop(a);
    s->send_rc = iop_async_send(a);
}

static void *send_once_thread(void *arg)
{
    if (iop_async_send(arg) != 0)
        abort();
    return NULL;
}

IOP_TEST(async_stop_self_from_callback, be)
{
    iop_loop *l = iop_test_loop(be);
    struct self_stop s;
    memset(&s, 0, sizeof s);
    CHECK_OK(iop_async_start(l, &s.a, self_stop_cb));
    pthread_t th;
    CHECK(pthread_create(&th, NULL, send_once_thread, &s.a) == 0);
    CHECK(pthread_join(th, NULL) == 0);
    iop_test_run_until(l, &s.calls, 2000);
    CHECK_EQ(s.calls, 1);
    CHECK_EQ(s.send_rc, -EINVAL); /* stopped: no longer started */
    CHECK_EQ(iop_loop_alive(l), 0);
    CHECK_EQ(iop_loop_run(l, IOP_RUN_DEFAULT), 0);

    /* It can be started again and works as new. */
    CHECK_OK(iop_async_start(l, &s.a, self_stop_cb));
    CHECK_OK(iop_async_send(&s.a));
    CHECK_OK(iop_async_send(&s.a)); /* merged with the first */
    iop_test_run_until(l, &s.calls, 2000);
    spin(l, 10);
    CHECK_EQ(s.calls, 2);
    CHECK_EQ(iop_loop_alive(l), 0);
    iop_test_loop_free(l);
}

struct mutual {
    iop_async a;
    struct mutual *other;
    int *total;
};

static void mutual_cb(iop_async *a)
{
    struct mutual *m = (struct mutual *)a;
    (*m->total)++;
    iop_async_stop(&m->other->a);
    /* Scribble over it: a stale pointer in the loop would call garbage. */
    memset(m->other, 0xa5, sizeof *m->other);
    iop_async_stop(a);
}

IOP_TEST(async_stop_other_from_callback, be)
{
    iop_loop *l = iop_test_loop(be);
    int total = 0;
    struct mutual *x = calloc(1, sizeof *x), *y = calloc(1, sizeof *y);
    x->other = y;
    y->other = x;
    x->total = y->total = &total;
    CHECK_OK(iop_async_start(l, &x->a, mutual_cb));
    CHECK_OK(iop_async_start(l, &y->a, mutual_cb));
    pthread_t th[2];
    CHECK(pthread_create(&th[0], NULL, send_once_thread, &x->a) == 0);
    CHECK(pthread_create(&th[1], NULL, send_once_thread, &y->a) == 0);
    CHECK(pthread_join(th[0], NULL) == 0);
    CHECK(pthread_join(th[1], NULL) == 0);
    /* Both are pending in the same wakeup; whichever runs first stops the
     * other before it runs. */
    iop_test_run_until(l, &total, 2000);
    spin(l, 10);
    CHECK_EQ(total, 1);
    CHECK_EQ(iop_loop_alive(l), 0);
    free(x);
    free(y);
    iop_test_loop_free(l);
}

IOP_TEST(async_send_not_started, be)
{
    iop_loop *l = iop_test_loop(be);
    iop_async a;
    memset(&a, 0, sizeof a);
    CHECK_EQ(iop_async_send(&a), -EINVAL);
    iop_async_stop(&a); /* not started: a no-op */
    CHECK_EQ(iop_loop_alive(l), 0);
    iop_test_loop_free(l);
}

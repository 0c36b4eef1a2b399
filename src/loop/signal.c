/* signal.c - POSIX signals turned into loop callbacks.
 *
 * Why not signalfd: it only sees signals blocked in every thread, and a
 * library cannot block signals in threads it does not own.  Instead a
 * sigaction handler marks the signal and writes the owning loop's eventfd;
 * the loop thread then runs the watchers.  The handler touches only atomics
 * and write(2), both async-signal-safe.
 *
 * A signal number has at most one owning loop (the process has one
 * disposition per signal); the table below is shared by all loops and
 * guarded by a mutex except in the handler, which reads it lock-free. */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "loop/loop_int.h"

#define IOP_NSIG 65 /* signals 1..64 on Linux */

static pthread_mutex_t sig_lock = PTHREAD_MUTEX_INITIALIZER;
static iop_loop *sig_owner[IOP_NSIG];
static struct sigaction sig_saved[IOP_NSIG];
static atomic_int sig_wakefd[IOP_NSIG]; /* owner's eventfd + 1; 0: none */
static atomic_int sig_hit[IOP_NSIG];

static void sig_handler(int signum)
{
    int saved = errno;
    if (signum > 0 && signum < IOP_NSIG) {
        atomic_store_explicit(&sig_hit[signum], 1, memory_order_release);
        int fd = atomic_load_explicit(&sig_wakefd[signum], memory_order_acquire) - 1;
        if (fd >= 0) {
            uint64_t one = 1;
            ssize_t n = write(fd, &one, sizeof one);
            (void)n; /* EAGAIN means the counter is already non-zero */
        }
    }
    errno = saved;
}

static uint64_t sig_bit(int signum)
{
    return (uint64_t)1 << (signum - 1);
}

int iop__signal_own(iop_loop *l, int signum)
{
    if (l->sig_owned & sig_bit(signum))
        return 0;
    int rc = 0;
    pthread_mutex_lock(&sig_lock);
    if (sig_owner[signum]) {
        rc = -EBUSY;
    } else {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = sig_handler;
        sa.sa_flags = SA_RESTART;
        sigfillset(&sa.sa_mask);
        atomic_store(&sig_hit[signum], 0);
        atomic_store(&sig_wakefd[signum], l->wakefd + 1);
        if (sigaction(signum, &sa, &sig_saved[signum]) < 0) {
            rc = -errno;
            atomic_store(&sig_wakefd[signum], 0);
        } else {
            sig_owner[signum] = l;
            l->sig_owned |= sig_bit(signum);
        }
    }
    pthread_mutex_unlock(&sig_lock);
    return rc;
}

void iop__signal_disown(iop_loop *l, int signum)
{
    if (!(l->sig_owned & sig_bit(signum)))
        return;
    pthread_mutex_lock(&sig_lock);
    (void)sigaction(signum, &sig_saved[signum], NULL);
    atomic_store(&sig_wakefd[signum], 0);
    sig_owner[signum] = NULL;
    pthread_mutex_unlock(&sig_lock);
    l->sig_owned &= ~sig_bit(signum);
}

int iop_signal_start(iop_loop *l, iop_signal *s, int signum, iop_signal_cb cb)
{
    if (signum <= 0 || signum >= IOP_NSIG || signum == SIGKILL || signum == SIGSTOP || !cb)
        return -EINVAL;
    int rc = iop__signal_own(l, signum);
    if (rc < 0)
        return rc;
    s->loop = l;
    s->cb = cb;
    s->signum = signum;
    s->next = l->signals;
    l->signals = s;
    l->nactive++;
    return 0;
}

static int signal_watched(const iop_loop *l, int signum)
{
    for (const iop_signal *s = l->signals; s; s = s->next)
        if (s->signum == signum)
            return 1;
    return 0;
}

void iop_signal_stop(iop_signal *s)
{
    iop_loop *l = s->loop;
    if (!l)
        return;
    for (iop_signal **pp = &l->signals; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    if (l->signal_next == s)
        l->signal_next = s->next;
    s->loop = NULL;
    s->next = NULL;
    l->nactive--;
    if (!signal_watched(l, s->signum))
        iop__signal_disown(l, s->signum);
}

void iop__signal_run(iop_loop *l)
{
    for (int signum = 1; l->sig_owned && signum < IOP_NSIG; signum++) {
        if (!(l->sig_owned & sig_bit(signum)))
            continue;
        if (!atomic_exchange_explicit(&sig_hit[signum], 0, memory_order_acq_rel))
            continue;
        /* Callbacks may stop any watcher: walk with a cursor that
         * iop_signal_stop() keeps valid. */
        for (iop_signal *s = l->signals; s; s = l->signal_next) {
            l->signal_next = s->next;
            if (s->signum == signum)
                s->cb(s, signum);
        }
        l->signal_next = NULL;
    }
}

void iop__signal_free(iop_loop *l)
{
    for (int signum = 1; l->sig_owned && signum < IOP_NSIG; signum++)
        iop__signal_disown(l, signum);
}

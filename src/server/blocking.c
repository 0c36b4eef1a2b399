/* blocking.c - the iterative, thread and fork models: ops tables for
 * reactor.c's worker (one per process: the blocking models have no worker
 * threads).  The core accepts, pauses at max_conns and stops; each
 * connection is an iop__pconn (conn.c: its waits are in poll(2)), served
 *
 *   iterative  inline, in the accept callback: one client at a time
 *   thread     on a joinable thread of its own; when handle() is done the
 *              thread moves itself to `done` and wakes the worker, whose
 *              wake op joins it
 *   fork       in a child process; SIGCHLD (an iop_signal) makes the loop
 *              reap with waitpid(-1, WNOHANG) until none is left, so no
 *              child stays a zombie (every child of this process is reaped)
 *
 * cfg.max_conns bounds the connections being served (= threads = child
 * processes): at the limit the core pauses the acceptors, new clients wait
 * in the kernel's backlog, and it resumes when one finishes.
 *
 * Stopping: notify writes the stop eventfds (conn_int.h), which is how a
 * stop reaches a handler blocked off the loop (or inline, holding it up).
 * At the graceful stop a thread asleep idle in recv(2) is shut down
 * (SHUT_RD); on stop now, or when grace ends, every thread's socket is
 * shut down (for a handler blocked in its own calls on iop_conn_fd) and
 * every child gets SIGTERM.  The worker is done when every thread is joined
 * and every child reaped. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "server/conn_int.h"
#include "server/reactor_int.h"

#define REAP_POLL_MS 100u /* fork: reaping by timer when SIGCHLD is taken */

struct bconn {
    struct iop__pconn pc; /* first: the iop_conn * handed to the handler is this */
    struct bw *w;
    pthread_t thread;
    struct bconn *prev, *next; /* w->open or w->done */
};

struct bw {
    struct iop__reactor r; /* first: the reactor's worker is this */
    struct iop__stop_fds stop;
    size_t live;  /* opened and not yet counted out (joined, reaped) */
    int inited;   /* init ran: stop fds and lock exist */
    int now_done; /* drop ran */
    /* thread: `open` are being served (stop now shuts them down), `done`
     * wait to be joined.  The lock guards both lists. */
    pthread_mutex_t lock;
    struct bconn *open, *done;
    /* fork: children being served */
    pid_t *pids;
    size_t npids, cappids;
    iop_signal sigchld;
    iop_timer reap_timer;
    int sigchld_on, reap_timer_on;
};

static struct bw *bw_of(struct iop__reactor *r)
{
    return (struct bw *)r;
}

/* ---- connections ---------------------------------------------------------- */

static void bconn_free(struct bconn *bc)
{
    iop__conn_fini(&bc->pc.conn);
    free(bc);
}

/* One connection fewer (loop thread). */
static void counted_out(struct bw *w)
{
    w->live--;
    iop__reactor_conn_closed(&w->r);
}

static void list_push(struct bconn **head, struct bconn *bc)
{
    bc->prev = NULL;
    bc->next = *head;
    if (*head)
        (*head)->prev = bc;
    *head = bc;
}

static void list_unlink(struct bconn **head, struct bconn *bc)
{
    if (bc->prev)
        bc->prev->next = bc->next;
    else
        *head = bc->next;
    if (bc->next)
        bc->next->prev = bc->prev;
    bc->prev = bc->next = NULL;
}

/* ---- what all three share ------------------------------------------------- */

static int bl_init(struct iop__reactor *r)
{
    struct bw *w = bw_of(r);
    pthread_mutex_init(&w->lock, NULL);
    w->inited = 1;
    return iop__stop_fds_open(&w->stop);
}

static int bl_open(struct iop__reactor_listener *li, int fd, void **conn)
{
    struct bw *w = bw_of(li->r);
    struct bconn *bc = calloc(1, sizeof *bc);
    if (!bc) {
        close(fd);
        return -ENOMEM;
    }
    iop__pconn_init(&bc->pc, w->r.srv, fd, li->index, &w->stop);
    bc->w = w;
    w->live++;
    *conn = bc;
    return 0;
}

static size_t bl_count(const struct iop__reactor *r)
{
    return ((const struct bw *)r)->live;
}

static void bl_notify(struct iop__reactor *r, int stopping)
{
    iop__stop_fds_notify(&bw_of(r)->stop, stopping, r->srv->cfg.grace_ms);
}

static void bl_stop(struct iop__reactor *r)
{
    struct bw *w = bw_of(r);
    pthread_mutex_lock(&w->lock);
    for (struct bconn *bc = w->open; bc; bc = bc->next)
        if (atomic_load(&bc->pc.parked))
            shutdown(bc->pc.conn.fd, SHUT_RD);
    pthread_mutex_unlock(&w->lock);
    iop__reactor_start_grace(r);
}

static void bl_drop(struct iop__reactor *r)
{
    struct bw *w = bw_of(r);
    if (w->now_done)
        return;
    w->now_done = 1;
    iop__stop_fds_notify(&w->stop, IOP__NOW, 0);
    pthread_mutex_lock(&w->lock);
    for (struct bconn *bc = w->open; bc; bc = bc->next)
        shutdown(bc->pc.conn.fd, SHUT_RDWR);
    pthread_mutex_unlock(&w->lock);
    for (size_t i = 0; i < w->npids; i++)
        kill(w->pids[i], SIGTERM);
}

static void bl_fini(struct iop__reactor *r)
{
    struct bw *w = bw_of(r);
    if (!w->inited)
        return;
    iop__stop_fds_close(&w->stop);
    pthread_mutex_destroy(&w->lock);
    free(w->pids);
}

/* ---- iterative ------------------------------------------------------------ */

static void it_start(struct iop__reactor *r, void *conn)
{
    struct bconn *bc = conn;
    iop__conn_serve(&bc->pc.conn);
    close(bc->pc.conn.fd);
    bconn_free(bc);
    counted_out(bw_of(r));
}

/* ---- thread --------------------------------------------------------------- */

static void *conn_thread(void *arg)
{
    struct bconn *bc = arg;
    struct bw *w = bc->w;
    iop__pconn_set_blocking(&bc->pc);
    iop__conn_serve(&bc->pc.conn);
    /* Off `open` before the close, so that stop now never shuts down a
     * reused fd number. */
    pthread_mutex_lock(&w->lock);
    list_unlink(&w->open, bc);
    pthread_mutex_unlock(&w->lock);
    close(bc->pc.conn.fd);
    pthread_mutex_lock(&w->lock);
    list_push(&w->done, bc);
    pthread_mutex_unlock(&w->lock);
    /* The worker joins this thread before it stops `wake`. */
    iop__reactor_wake(&w->r);
    return NULL;
}

static void th_start(struct iop__reactor *r, void *conn)
{
    struct bw *w = bw_of(r);
    struct bconn *bc = conn;
    pthread_mutex_lock(&w->lock);
    list_push(&w->open, bc);
    pthread_mutex_unlock(&w->lock);
    int rc = pthread_create(&bc->thread, NULL, conn_thread, bc);
    if (rc == 0)
        return;
    iop__server_log(r->srv, "thread for a connection: %s", iop_strerror(-rc));
    pthread_mutex_lock(&w->lock);
    list_unlink(&w->open, bc);
    pthread_mutex_unlock(&w->lock);
    close(bc->pc.conn.fd);
    bconn_free(bc);
    counted_out(w);
}

/* Join the threads that are done (loop thread). */
static void join_done(struct iop__reactor *r)
{
    struct bw *w = bw_of(r);
    pthread_mutex_lock(&w->lock);
    struct bconn *list = w->done;
    w->done = NULL;
    pthread_mutex_unlock(&w->lock);
    while (list) {
        struct bconn *bc = list;
        list = bc->next;
        pthread_join(bc->thread, NULL);
        bconn_free(bc);
        counted_out(w);
    }
}

/* The loop failed: end every connection without it. */
static void th_abort(struct iop__reactor *r)
{
    struct bw *w = bw_of(r);
    if (!w->live)
        return;
    bl_drop(r);
    /* Threads move themselves from `open` to `done`; the stop makes them
     * return soon. */
    for (;;) {
        pthread_mutex_lock(&w->lock);
        int busy = w->open != NULL;
        pthread_mutex_unlock(&w->lock);
        if (!busy)
            break;
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    join_done(r);
}

/* ---- fork ----------------------------------------------------------------- */

/* A fork child: what it inherited from the worker and must not keep or
 * run. */
static void child_setup(iop_server *srv)
{
    /* Its shutdown calls (a signal handler's copy of the server) must not
     * write the eventfds the parent and its siblings wait on. */
    atomic_store(&srv->notify, (void (*)(iop_server *))0);
    /* SIGTERM is the parent's stop now: die.  Ctrl-C reaches the whole
     * process group: a handled SIGINT is the parent's to act on (it stops
     * gracefully, then sends SIGTERM), so the child ignores it.  Its own
     * children are the handler's business. */
    struct sigaction dfl, cur;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGTERM, &dfl, NULL);
    sigaction(SIGCHLD, &dfl, NULL);
    if (sigaction(SIGINT, NULL, &cur) == 0 && cur.sa_handler != SIG_DFL &&
        cur.sa_handler != SIG_IGN) {
        dfl.sa_handler = SIG_IGN;
        sigaction(SIGINT, &dfl, NULL);
    }
    /* The listening sockets: a child holding them would keep the port
     * bound (and a Unix listener alive) after the server is gone.  The
     * loop's own fds are CLOEXEC and unused here; _exit closes them. */
    for (size_t i = 0; i < srv->nls; i++)
        for (size_t k = 0; k < srv->ls[i].nfds; k++)
            if (srv->ls[i].fds[k] >= 0)
                close(srv->ls[i].fds[k]);
}

static int pids_add(struct bw *w, pid_t pid)
{
    if (w->npids == w->cappids) {
        size_t cap = w->cappids ? 2 * w->cappids : 64;
        pid_t *p = realloc(w->pids, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        w->pids = p;
        w->cappids = cap;
    }
    w->pids[w->npids++] = pid;
    return 0;
}

/* The child never returns: it _exits (as server.c's worker processes do),
 * since a forked copy of the caller's process must not run its code on. */
static void fk_start(struct iop__reactor *r, void *conn)
{
    struct bw *w = bw_of(r);
    struct bconn *bc = conn;
    /* Room first: a child we could not record would never be counted
     * out.  Signals blocked across fork, so that none runs a parent's
     * handler in the child before child_setup has reset them. */
    int rc = pids_add(w, 0);
    sigset_t all, old;
    sigfillset(&all);
    fflush(NULL); /* or the child's exit would write the parent's buffers too */
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid_t pid = rc < 0 ? -1 : fork();
    if (pid == 0) {
        child_setup(r->srv);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        iop__conn_serve(&bc->pc.conn);
        fflush(NULL);
        _exit(0);
    }
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(bc->pc.conn.fd);
    bconn_free(bc);
    if (pid > 0) {
        w->pids[w->npids - 1] = pid;
        return;
    }
    if (rc == 0)
        w->npids--;
    iop__server_log(r->srv, "fork for a connection: %s", iop_strerror(rc < 0 ? rc : -err));
    counted_out(w);
}

static void reap(struct bw *w)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0 || (pid < 0 && errno == EINTR)) {
        for (size_t i = 0; pid > 0 && i < w->npids; i++) {
            if (w->pids[i] == pid) {
                w->pids[i] = w->pids[--w->npids];
                counted_out(w);
                break;
            }
        }
    }
}

static void sigchld_cb(iop_signal *s, int signum)
{
    (void)signum;
    reap(s->data);
}

static void reap_timer_cb(iop_timer *t)
{
    reap(t->data);
}

static int fk_init(struct iop__reactor *r)
{
    struct bw *w = bw_of(r);
    int rc = bl_init(r);
    if (rc < 0)
        return rc;
    w->sigchld.data = w;
    if (iop_signal_start(r->loop, &w->sigchld, SIGCHLD, sigchld_cb) == 0) {
        w->sigchld_on = 1;
        return 0;
    }
    /* Another loop of this process owns SIGCHLD: look now and then. */
    iop_timer_init(&w->reap_timer, reap_timer_cb);
    w->reap_timer.data = w;
    rc = iop_timer_start(r->loop, &w->reap_timer, REAP_POLL_MS, REAP_POLL_MS);
    w->reap_timer_on = rc == 0;
    return rc;
}

static void fk_done(struct iop__reactor *r)
{
    struct bw *w = bw_of(r);
    if (w->reap_timer_on)
        iop_timer_stop(&w->reap_timer);
    if (w->sigchld_on)
        iop_signal_stop(&w->sigchld);
    w->reap_timer_on = w->sigchld_on = 0;
}

/* The loop failed: end every child without it. */
static void fk_abort(struct iop__reactor *r)
{
    struct bw *w = bw_of(r);
    if (w->live)
        bl_drop(r);
    while (w->npids > 0) {
        if (waitpid(w->pids[w->npids - 1], NULL, 0) < 0 && errno == EINTR)
            continue;
        w->npids--;
        w->live--;
        atomic_fetch_sub(&r->srv->nconns, 1);
    }
    fk_done(r);
}

static void fk_fini(struct iop__reactor *r)
{
    fk_done(r);
    bl_fini(r);
}

/* ---- the ops tables ------------------------------------------------------- */

const struct iop__reactor_ops iop__iterative_ops = {
    .worker_size = sizeof(struct bw),
    .init = bl_init,
    .open = bl_open,
    .start = it_start,
    .count = bl_count,
    .stop = bl_stop,
    .drop = bl_drop,
    .notify = bl_notify,
    .fini = bl_fini,
};

const struct iop__reactor_ops iop__thread_ops = {
    .worker_size = sizeof(struct bw),
    .init = bl_init,
    .open = bl_open,
    .start = th_start,
    .count = bl_count,
    .stop = bl_stop,
    .drop = bl_drop,
    .notify = bl_notify,
    .wake = join_done,
    .after_run = th_abort,
    .fini = bl_fini,
};

const struct iop__reactor_ops iop__fork_ops = {
    .worker_size = sizeof(struct bw),
    .init = fk_init,
    .open = bl_open,
    .start = fk_start,
    .count = bl_count,
    .stop = bl_stop,
    .drop = bl_drop,
    .notify = bl_notify,
    .done = fk_done,
    .after_run = fk_abort,
    .fini = fk_fini,
};

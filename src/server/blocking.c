/* blocking.c - the iterative, thread and fork models.
 *
 * One loop (cfg.backend, cfg.loop_flags) on the calling thread accepts: an
 * iop_acceptor per stream listener, the datagram listeners beside them.
 * Each connection gets an iop_conn (conn_int.h) and is served
 *
 *   iterative  inline, in the accept callback: one client at a time
 *   thread     on a joinable thread of its own; when handle() is done the
 *              thread moves itself to `done` and wakes the loop (async),
 *              which joins it
 *   fork       in a child process; SIGCHLD (an iop_signal) makes the loop
 *              reap with waitpid(-1, WNOHANG) until none is left, so no
 *              child stays a zombie (every child of this process is reaped)
 *
 * cfg.max_conns bounds the connections being served (= threads = child
 * processes): at the limit the acceptors pause, new clients wait in the
 * kernel's backlog, and the loop resumes when one finishes.
 *
 * Iterative and fork connections stay non-blocking; the iop_conn calls
 * wait in poll(2) on the socket and on two eventfds that
 * iop_server_shutdown() writes (it may run in a signal handler: write(2)
 * is async-signal-safe):
 *
 *   gracefd  the graceful stop began; the wait picks up the deadline
 *            (grace_at) so that an iterative handler, which has the loop
 *            to itself, still ends when the grace runs out
 *   nowfd    stop now: every wait returns -ECANCELED at once
 *
 * Never drained, they stay readable, so every waiting thread sees them, as
 * do fork children (they inherit the fds).  Stop now also shuts down every
 * open thread connection's socket (for a handler blocked in its own calls
 * on iop_conn_fd) and sends SIGTERM to every child.
 *
 * Thread connections are made blocking, and a recv that would find the
 * socket empty sleeps in recv(2) itself, with SO_RCVTIMEO for the timeout:
 * a poll before each recv costs a system call per message, about 15% of
 * the model's throughput.  The other calls keep MSG_DONTWAIT and wait in
 * poll.  Such a sleeper sees neither eventfd, so the loop wakes it with
 * shutdown(2): SHUT_RD at the start of a graceful stop if it is waiting
 * idle (iop_conn_set_idle; `parked` says so), SHUT_RDWR on stop now.
 *
 * Graceful stop: stop accepting (acceptors and datagram listeners), let
 * handlers finish for at most grace_ms, then stop now; return 0 when every
 * thread is joined and every child reaped. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "server/conn_int.h"
#include "server/server_int.h"

#define DEFAULT_MAX_CONNS 10000u
#define DEFAULT_GRACE_MS  10000u
#define REAP_POLL_MS      100u /* fork: reaping by timer when SIGCHLD is taken */

struct blk;

struct blk_listener {
    iop_acceptor acc;
    struct blk *m;
    int index;
    int started; /* started and not stopped */
};

struct blk_conn {
    iop_conn conn; /* first: the iop_conn * handed to the handler is this */
    struct blk *m;
    pthread_t thread;
    struct blk_conn *prev, *next; /* m->open or m->done */
    int grace_seen;               /* gracefd was readable: poll it no more */
    int drained;                  /* the last recv was short: the socket is empty */
    int blocking;                 /* thread: the socket is blocking (recv_asleep) */
    unsigned rcvtimeo;            /* its SO_RCVTIMEO in ms (0: none) */
    atomic_int parked;            /* thread: idle and asleep in recv(2) */
};

struct blk {
    iop_server *srv;
    int model;
    size_t max_conns;
    unsigned grace_ms;
    iop_loop *loop;
    iop_async wake;
    iop_timer grace;
    iop_signal sigchld;
    iop_timer reap_timer;
    int sigchld_on, reap_timer_on;
    int nowfd, gracefd;
    _Atomic uint64_t grace_at; /* CLOCK_MONOTONIC ms; 0: not stopping */
    atomic_int now;            /* stop now: conns' stop_now flag */
    struct blk_listener *ls;   /* nls, stream listeners only started */
    iop_dgram **dgrams;        /* nls */
    int dgrams_on;
    int paused, stopping, now_done, finished;
    /* thread: `open` are being served (stop now shuts them down), `done`
     * wait to be joined.  The lock guards both lists. */
    pthread_mutex_t lock;
    struct blk_conn *open, *done;
    /* fork: children being served */
    pid_t *pids;
    size_t npids, cappids;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* async-signal-safe */
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void poke(int efd)
{
    uint64_t one = 1;
    ssize_t n = write(efd, &one, sizeof one);
    (void)n; /* only fails when the counter is full: readable anyway */
}

/* ---- waiting (the iop_conn raw op) ---------------------------------------- */

/* -ECANCELED, and every later call of the conn fails the same way. */
static int cancel(struct blk_conn *bc)
{
    bc->conn.cancelled = 1;
    return -ECANCELED;
}

/* The poll(2) timeout for the nearest of the idle deadline (idle_at) and
 * the grace deadline; 0 when one of them has passed (*which says which). */
static int wait_timeout(struct blk_conn *bc, uint64_t idle_at, int *grace_over)
{
    uint64_t t = now_ms(), due = idle_at;
    uint64_t grace_at = bc->grace_seen ? atomic_load(&bc->m->grace_at) : 0;
    *grace_over = 0;
    if (grace_at && (!due || grace_at < due)) {
        due = grace_at;
        *grace_over = 1;
    }
    if (!due)
        return -1;
    if (due <= t)
        return 0;
    return due - t > INT32_MAX ? INT32_MAX : (int)(due - t);
}

static int blk_wait(iop_conn *c, unsigned events)
{
    struct blk_conn *bc = (struct blk_conn *)c;
    struct blk *m = bc->m;
    unsigned idle = iop__conn_wait_ms(c);
    uint64_t idle_at = idle ? now_ms() + idle : 0;
    for (;;) {
        /* grace_seen too: a fork child's copy of the server never sees
         * the parent's stopping state change, only the shared eventfd. */
        if (c->cancelled || atomic_load(&m->now) || iop__conn_stop_idle(c) ||
            (c->idle && bc->grace_seen))
            return cancel(bc);
        int grace_over, timeout = wait_timeout(bc, idle_at, &grace_over);
        if (timeout == 0)
            return grace_over ? cancel(bc) : -ETIMEDOUT;
        short want = (short)((events & IOP_READ ? POLLIN : 0) | (events & IOP_WRITE ? POLLOUT : 0));
        struct pollfd p[3] = {{c->fd, want, 0}, {m->nowfd, POLLIN, 0}, {m->gracefd, POLLIN, 0}};
        int r = poll(p, bc->grace_seen ? 2 : 3, timeout);
        if (r < 0 && errno != EINTR)
            return -errno;
        if (r <= 0)
            continue; /* the deadlines are checked above */
        if (p[1].revents)
            return cancel(bc);
        if (!bc->grace_seen && p[2].revents)
            bc->grace_seen = 1;
        if (p[0].revents)
            return 0; /* ready, or an error the next call will tell */
    }
}

/* SO_RCVTIMEO for a wait of `left` ms (0: none).  A shorter setting is
 * kept when within 8x (recv wakes early and the caller sleeps again), so
 * that a handler alternating two timeouts does not pay a system call for
 * each wait; a longer one never is. */
static int set_rcvtimeo(struct blk_conn *bc, uint64_t left)
{
    unsigned cur = bc->rcvtimeo;
    if (left ? cur && cur <= left && (uint64_t)cur * 8 >= left : !cur)
        return 0;
    unsigned ms = left > UINT32_MAX ? UINT32_MAX : (unsigned)left;
    struct timeval tv = {(time_t)(ms / 1000u), (suseconds_t)(ms % 1000u) * 1000};
    if (setsockopt(bc->conn.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0)
        return -errno;
    bc->rcvtimeo = ms;
    return 0;
}

/* Thread model, socket empty: sleep in recv(2).  An EOF while the server
 * stops is the loop's shutdown(2) (see the top), so it cancels. */
static ssize_t recv_asleep(struct blk_conn *bc, void *buf, size_t len)
{
    iop_conn *c = &bc->conn;
    struct blk *m = bc->m;
    unsigned idle = iop__conn_wait_ms(c);
    uint64_t idle_at = idle ? now_ms() + idle : 0;
    for (;;) {
        uint64_t t = now_ms();
        if (idle_at && t >= idle_at)
            return -ETIMEDOUT;
        int rc = set_rcvtimeo(bc, idle_at ? idle_at - t : 0);
        if (rc < 0)
            return rc;
        /* Published before the stop check, and begin_stop stores the stop
         * before it reads `parked`: one of the two sees the other. */
        atomic_store(&bc->parked, c->idle);
        if (c->cancelled || atomic_load(&m->now) || iop__conn_stop_idle(c)) {
            atomic_store(&bc->parked, 0);
            return cancel(bc);
        }
        ssize_t n = recv(c->fd, buf, len, 0);
        int err = errno;
        atomic_store(&bc->parked, 0);
        if (n > 0)
            return n;
        if (n == 0)
            return atomic_load(&m->now) || iop__conn_stop_idle(c) ? cancel(bc) : 0;
        if (err != EINTR && err != EAGAIN && err != EWOULDBLOCK)
            return -err;
    }
}

/* After a short read the socket is almost surely empty: wait first rather
 * than pay for a recv that says EAGAIN (one system call per message). */
static ssize_t blk_recv(iop_conn *c, void *buf, size_t len)
{
    struct blk_conn *bc = (struct blk_conn *)c;
    if (bc->drained && bc->blocking) {
        ssize_t n = recv_asleep(bc, buf, len);
        bc->drained = n > 0 && (size_t)n < len;
        return n;
    }
    if (bc->drained) {
        int rc = blk_wait(c, IOP_READ);
        if (rc < 0)
            return rc;
    }
    ssize_t n = iop__conn_recv_ready(c, buf, len);
    bc->drained = n > 0 && (size_t)n < len;
    return n;
}

static const struct iop__conn_ops blk_ops = {
    .recv = blk_recv,
    .send = iop__conn_send_ready,
    .wait = blk_wait,
};

static struct blk_conn *conn_new(struct blk *m, int fd, int listener)
{
    struct blk_conn *bc = calloc(1, sizeof *bc);
    if (!bc)
        return NULL;
    iop__conn_init(&bc->conn, m->srv, &blk_ops, fd, listener, &m->now);
    bc->m = m;
    return bc;
}

static void conn_free(struct blk_conn *bc)
{
    iop__conn_fini(&bc->conn);
    free(bc);
}

/* ---- accepting ------------------------------------------------------------ */

static void check(struct blk *m);

static void acceptors_pause(struct blk *m, int pause)
{
    if (m->paused == pause)
        return;
    m->paused = pause;
    for (size_t i = 0; i < m->srv->nls; i++)
        if (m->ls[i].started)
            (void)(pause ? iop_acceptor_pause(&m->ls[i].acc) : iop_acceptor_resume(&m->ls[i].acc));
}

/* One connection fewer (loop thread). */
static void conn_gone(struct blk *m)
{
    atomic_fetch_sub(&m->srv->nconns, 1);
}

static void serve_inline(struct blk *m, struct blk_conn *bc)
{
    iop__conn_serve(&bc->conn);
    close(bc->conn.fd);
    conn_free(bc);
    conn_gone(m);
}

static void list_push(struct blk_conn **head, struct blk_conn *bc)
{
    bc->prev = NULL;
    bc->next = *head;
    if (*head)
        (*head)->prev = bc;
    *head = bc;
}

static void list_unlink(struct blk_conn **head, struct blk_conn *bc)
{
    if (bc->prev)
        bc->prev->next = bc->next;
    else
        *head = bc->next;
    if (bc->next)
        bc->next->prev = bc->prev;
    bc->prev = bc->next = NULL;
}

static void *conn_thread(void *arg)
{
    struct blk_conn *bc = arg;
    struct blk *m = bc->m;
    int fl = fcntl(bc->conn.fd, F_GETFL);
    /* Should it fail, recv waits in poll as in the other models. */
    bc->blocking = fl >= 0 && fcntl(bc->conn.fd, F_SETFL, fl & ~O_NONBLOCK) == 0;
    /* sendfile(2) has no MSG_DONTWAIT: bound its sleep by the idle timeout
     * (it then waits in poll for the rest, as on EAGAIN before). */
    unsigned idle = m->srv->cfg.idle_timeout_ms;
    if (bc->blocking && idle) {
        struct timeval tv = {(time_t)(idle / 1000u), (suseconds_t)(idle % 1000u) * 1000};
        setsockopt(bc->conn.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    iop__conn_serve(&bc->conn);
    /* Off `open` before the close, so that stop now never shuts down a
     * reused fd number. */
    pthread_mutex_lock(&m->lock);
    list_unlink(&m->open, bc);
    pthread_mutex_unlock(&m->lock);
    close(bc->conn.fd);
    pthread_mutex_lock(&m->lock);
    list_push(&m->done, bc);
    pthread_mutex_unlock(&m->lock);
    /* The loop joins this thread before it stops `wake`. */
    iop_async_send(&m->wake);
    return NULL;
}

static void serve_thread(struct blk *m, struct blk_conn *bc)
{
    pthread_mutex_lock(&m->lock);
    list_push(&m->open, bc);
    pthread_mutex_unlock(&m->lock);
    int rc = pthread_create(&bc->thread, NULL, conn_thread, bc);
    if (rc == 0)
        return;
    iop__server_log(m->srv, "thread for a connection: %s", iop_strerror(rc));
    pthread_mutex_lock(&m->lock);
    list_unlink(&m->open, bc);
    pthread_mutex_unlock(&m->lock);
    close(bc->conn.fd);
    conn_free(bc);
    conn_gone(m);
}

/* Join the threads that are done (loop thread). */
static void join_done(struct blk *m)
{
    pthread_mutex_lock(&m->lock);
    struct blk_conn *list = m->done;
    m->done = NULL;
    pthread_mutex_unlock(&m->lock);
    while (list) {
        struct blk_conn *bc = list;
        list = bc->next;
        pthread_join(bc->thread, NULL);
        conn_free(bc);
        conn_gone(m);
    }
}

/* A fork child: what it inherited from the accept loop and must not keep
 * or run. */
static void child_setup(struct blk *m)
{
    iop_server *srv = m->srv;
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

static int pids_add(struct blk *m, pid_t pid)
{
    if (m->npids == m->cappids) {
        size_t cap = m->cappids ? 2 * m->cappids : 64;
        pid_t *p = realloc(m->pids, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        m->pids = p;
        m->cappids = cap;
    }
    m->pids[m->npids++] = pid;
    return 0;
}

static void serve_fork(struct blk *m, struct blk_conn *bc)
{
    /* Room first: a child we could not record would never be counted
     * down.  Signals blocked across fork, so that none runs a parent's
     * handler in the child before child_setup has reset them. */
    int rc = pids_add(m, 0);
    sigset_t all, old;
    sigfillset(&all);
    fflush(NULL); /* or the child's exit would write the parent's buffers too */
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid_t pid = rc < 0 ? -1 : fork();
    if (pid == 0) {
        child_setup(m);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        iop__conn_serve(&bc->conn);
        fflush(NULL);
        _exit(0);
    }
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(bc->conn.fd);
    conn_free(bc);
    if (pid > 0) {
        m->pids[m->npids - 1] = pid;
        return;
    }
    if (rc == 0)
        m->npids--;
    iop__server_log(m->srv, "fork for a connection: %s", iop_strerror(rc < 0 ? rc : err));
    conn_gone(m);
}

static void reap(struct blk *m)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0 || (pid < 0 && errno == EINTR)) {
        for (size_t i = 0; pid > 0 && i < m->npids; i++) {
            if (m->pids[i] == pid) {
                m->pids[i] = m->pids[--m->npids];
                conn_gone(m);
                break;
            }
        }
    }
}

static void accept_cb(iop_acceptor *acc, int fd)
{
    struct blk_listener *bl = acc->data;
    struct blk *m = bl->m;
    iop_server *srv = m->srv;
    struct blk_conn *bc = NULL;
    if (m->stopping || atomic_load(&srv->stopping) != IOP__RUNNING ||
        !(bc = conn_new(m, fd, bl->index))) {
        close(fd);
        return;
    }
    size_t n = atomic_fetch_add(&srv->nconns, 1) + 1;
    if (m->model == IOP_MODEL_ITERATIVE) {
        serve_inline(m, bc);
        return;
    }
    if (n >= m->max_conns)
        acceptors_pause(m, 1);
    if (m->model == IOP_MODEL_THREAD)
        serve_thread(m, bc);
    else
        serve_fork(m, bc);
    check(m); /* a thread or fork that failed made room again */
}

static void accept_error_cb(iop_acceptor *acc, int err)
{
    struct blk_listener *bl = acc->data;
    iop__server_log(bl->m->srv, "listener %d: accept: %s", bl->index, iop_strerror(err));
    if (err != -EMFILE && err != -ENFILE && err != -ENOBUFS && err != -ENOMEM) {
        iop_acceptor_stop(acc, NULL); /* the listening socket is broken */
        bl->started = 0;
    }
}

/* ---- stopping ------------------------------------------------------------- */

/* iop_server_shutdown() counts itself in while it calls notify, and
 * unhook() waits for that count (iop__server_quiesce) before freeing what
 * notify touches.  srv->model is read and written with __atomic builtins,
 * as notify may read it on another thread or in a signal handler. */
/* iop_server_shutdown() (any thread, or a signal handler). */
static void blk_notify(iop_server *srv)
{
    struct blk *m = __atomic_load_n(&srv->model, __ATOMIC_SEQ_CST);
    int st = atomic_load(&srv->stopping);
    if (m && st >= IOP__GRACEFUL) {
        uint64_t zero = 0;
        atomic_compare_exchange_strong(&m->grace_at, &zero, now_ms() + m->grace_ms);
        poke(m->gracefd);
    }
    if (m && st >= IOP__NOW) {
        atomic_store(&m->now, 1);
        poke(m->nowfd);
    }
    if (m)
        iop_async_send(&m->wake);
}

static void unhook(iop_server *srv)
{
    iop__server_quiesce(srv);
    __atomic_store_n(&srv->model, NULL, __ATOMIC_SEQ_CST);
}

static void grace_cb(iop_timer *t)
{
    struct blk *m = t->data;
    atomic_store(&m->now, 1);
    poke(m->nowfd);
    check(m);
}

static void begin_stop(struct blk *m)
{
    m->stopping = 1;
    for (size_t i = 0; i < m->srv->nls; i++) {
        if (m->ls[i].started)
            iop_acceptor_stop(&m->ls[i].acc, NULL);
        m->ls[i].started = 0;
    }
    iop__server_refuse(m->srv, 0);
    pthread_mutex_lock(&m->lock);
    for (struct blk_conn *bc = m->open; bc; bc = bc->next)
        if (atomic_load(&bc->parked))
            shutdown(bc->conn.fd, SHUT_RD);
    pthread_mutex_unlock(&m->lock);
    if (m->dgrams_on)
        iop__server_dgram_stop(m->srv, m->dgrams);
    m->dgrams_on = 0;
    iop_timer_start(m->loop, &m->grace, m->grace_ms, 0);
}

static void stop_now(struct blk *m)
{
    m->now_done = 1;
    atomic_store(&m->now, 1);
    poke(m->nowfd);
    pthread_mutex_lock(&m->lock);
    for (struct blk_conn *bc = m->open; bc; bc = bc->next)
        shutdown(bc->conn.fd, SHUT_RDWR);
    pthread_mutex_unlock(&m->lock);
    for (size_t i = 0; i < m->npids; i++)
        kill(m->pids[i], SIGTERM);
}

/* After anything that may have changed the state (loop thread). */
static void check(struct blk *m)
{
    join_done(m);
    if (m->model == IOP_MODEL_FORK)
        reap(m);
    if (!m->stopping && atomic_load(&m->srv->stopping) != IOP__RUNNING)
        begin_stop(m);
    if (m->stopping && !m->now_done && atomic_load(&m->now))
        stop_now(m);
    size_t n = atomic_load(&m->srv->nconns);
    if (m->stopping && n == 0) {
        m->finished = 1;
        iop_loop_stop(m->loop);
    } else if (!m->stopping && n < m->max_conns) {
        acceptors_pause(m, 0);
    }
}

static void wake_cb(iop_async *a)
{
    check(a->data);
}

static void sigchld_cb(iop_signal *s, int signum)
{
    (void)signum;
    check(s->data);
}

static void reap_timer_cb(iop_timer *t)
{
    check(t->data);
}

/* ---- setting up and tearing down ------------------------------------------ */

static int start_fork_reaping(struct blk *m)
{
    m->sigchld.data = m;
    if (iop_signal_start(m->loop, &m->sigchld, SIGCHLD, sigchld_cb) == 0) {
        m->sigchld_on = 1;
        return 0;
    }
    /* Another loop of this process owns SIGCHLD: look now and then. */
    iop_timer_init(&m->reap_timer, reap_timer_cb);
    m->reap_timer.data = m;
    int rc = iop_timer_start(m->loop, &m->reap_timer, REAP_POLL_MS, REAP_POLL_MS);
    m->reap_timer_on = rc == 0;
    return rc;
}

static int start_listeners(struct blk *m)
{
    iop_server *srv = m->srv;
    for (size_t i = 0; i < srv->nls; i++) {
        struct blk_listener *bl = &m->ls[i];
        bl->m = m;
        bl->index = (int)i;
        if (srv->ls[i].kind == IOP_ADDR_UDP)
            continue;
        bl->acc.data = bl;
        int rc = iop_acceptor_start(m->loop, &bl->acc, iop__listener_fd(srv, i, 0), accept_cb,
                                    accept_error_cb);
        if (rc < 0)
            return rc;
        bl->started = 1;
    }
    m->dgrams_on = 1; /* a half-done start is stopped the same way */
    return iop__server_dgram_start(srv, m->loop, 0, m->dgrams);
}

static int blk_open(struct blk *m)
{
    iop_server *srv = m->srv;
    m->nowfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    m->gracefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (m->nowfd < 0 || m->gracefd < 0)
        return -errno;
    m->ls = calloc(srv->nls, sizeof *m->ls);
    m->dgrams = calloc(srv->nls, sizeof *m->dgrams);
    if (!m->ls || !m->dgrams)
        return -ENOMEM;
    int rc = iop_loop_new(&m->loop, srv->cfg.backend, srv->cfg.loop_flags);
    if (rc < 0)
        return rc;
    m->wake.data = m;
    iop_timer_init(&m->grace, grace_cb);
    m->grace.data = m;
    if ((rc = iop_async_start(m->loop, &m->wake, wake_cb)) < 0)
        return rc;
    if (m->model == IOP_MODEL_FORK && (rc = start_fork_reaping(m)) < 0)
        return rc;
    return start_listeners(m);
}

/* The loop failed: end every connection without it. */
static void abort_conns(struct blk *m)
{
    if (!m->now_done)
        stop_now(m);
    /* Threads move themselves from `open` to `done`; the stop makes them
     * return soon. */
    for (;;) {
        pthread_mutex_lock(&m->lock);
        int busy = m->open != NULL;
        pthread_mutex_unlock(&m->lock);
        if (!busy)
            break;
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    join_done(m);
    while (m->npids > 0) {
        if (waitpid(m->pids[m->npids - 1], NULL, 0) < 0 && errno == EINTR)
            continue;
        m->npids--;
        conn_gone(m);
    }
}

static void blk_close(struct blk *m)
{
    if (m->loop) {
        for (size_t i = 0; m->ls && i < m->srv->nls; i++)
            if (m->ls[i].started)
                iop_acceptor_stop(&m->ls[i].acc, NULL);
        if (m->dgrams_on)
            iop__server_dgram_stop(m->srv, m->dgrams);
        iop_timer_stop(&m->grace);
        if (m->reap_timer_on)
            iop_timer_stop(&m->reap_timer);
        if (m->sigchld_on)
            iop_signal_stop(&m->sigchld);
        iop_async_stop(&m->wake);
        /* Acceptor cancels (io_uring) and datagram closes complete here. */
        while (iop_loop_run(m->loop, IOP_RUN_DEFAULT) > 0)
            ;
        iop_loop_free(m->loop);
    }
    if (m->nowfd >= 0)
        close(m->nowfd);
    if (m->gracefd >= 0)
        close(m->gracefd);
    pthread_mutex_destroy(&m->lock);
    free(m->ls);
    free(m->dgrams);
    free(m->pids);
    free(m);
}

int iop__blocking_run(iop_server *srv)
{
    struct blk *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->srv = srv;
    m->model = srv->cfg.model;
    m->max_conns = srv->cfg.max_conns ? srv->cfg.max_conns : DEFAULT_MAX_CONNS;
    m->grace_ms = srv->cfg.grace_ms ? srv->cfg.grace_ms : DEFAULT_GRACE_MS;
    m->nowfd = m->gracefd = -1;
    pthread_mutex_init(&m->lock, NULL);
    int rc = blk_open(m);
    if (rc == 0) {
        __atomic_store_n(&srv->model, m, __ATOMIC_SEQ_CST);
        srv->notify = blk_notify;
        if (atomic_load(&srv->stopping) != IOP__RUNNING)
            blk_notify(srv); /* shut down before it ran */
        while (!m->finished && rc >= 0)
            rc = iop_loop_run(m->loop, IOP_RUN_ONCE);
        unhook(srv);
        if (rc < 0)
            abort_conns(m);
        else
            rc = 0;
    }
    blk_close(m);
    return rc;
}

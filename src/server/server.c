/* server.c - the server object: listeners, worker processes, shutdown, and
 * the datagram listeners every model serves.  The models are ops tables
 * (event.c, coro_model.c, blocking.c) for reactor.c's workers. */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "server/reactor_int.h"

#define MAX_SOCKETS 1024 /* processes x workers per listener */

/* ---- models ------------------------------------------------------------ */

static const char *const model_names[] = {
    [IOP_MODEL_EVENT] = "event", [IOP_MODEL_ITERATIVE] = "iterative", [IOP_MODEL_THREAD] = "thread",
    [IOP_MODEL_FORK] = "fork",   [IOP_MODEL_CORO] = "coro",
};

int iop_model_parse(const char *name)
{
    for (size_t i = 0; name && i < sizeof model_names / sizeof model_names[0]; i++)
        if (!strcmp(name, model_names[i]))
            return (int)i;
    return -EINVAL;
}

const char *iop_model_name(int model)
{
    if (model < 0 || (size_t)model >= sizeof model_names / sizeof model_names[0])
        return "?";
    return model_names[model];
}

static int blocking_model(int model)
{
    return model == IOP_MODEL_ITERATIVE || model == IOP_MODEL_THREAD || model == IOP_MODEL_FORK;
}

/* ---- the object -------------------------------------------------------- */

static int check_config(const struct iop_server_config *cfg)
{
    const struct iop_handler *h = cfg->handler;
    if (!h || cfg->model < IOP_MODEL_EVENT || cfg->model > IOP_MODEL_CORO)
        return -EINVAL;
    if (cfg->model == IOP_MODEL_EVENT && !h->on_data && !h->on_datagram)
        return -EINVAL;
    if ((blocking_model(cfg->model) || cfg->model == IOP_MODEL_CORO) && !h->handle &&
        !h->on_datagram)
        return -EINVAL;
    /* Worker threads are reactors: the blocking models have none. */
    if (blocking_model(cfg->model) && cfg->workers > 1)
        return -EINVAL;
    if ((size_t)(cfg->workers ? cfg->workers : 1) * (cfg->processes ? cfg->processes : 1) >
        MAX_SOCKETS)
        return -EINVAL;
    return 0;
}

/* The one place defaults are applied: past here every member holds what it
 * means (grace_ms 0: no grace). */
static void apply_defaults(struct iop_server_config *c)
{
    if (!c->max_conns)
        c->max_conns = IOP_SERVER_DEFAULT_MAX_CONNS;
    if (!c->grace_ms)
        c->grace_ms = IOP_SERVER_DEFAULT_GRACE_MS;
    else if (c->grace_ms == IOP_SERVER_GRACE_NONE)
        c->grace_ms = 0;
    if (!c->high_water)
        c->high_water = IOP_SERVER_DEFAULT_HIGH_WATER;
    if (!c->stack_size)
        c->stack_size = IOP_SERVER_DEFAULT_STACK_SIZE;
}

int iop_server_new(const struct iop_server_config *cfg, iop_server **out)
{
    if (!out || !cfg)
        return -EINVAL;
    int rc = check_config(cfg);
    if (rc < 0)
        return rc;
    iop_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return -ENOMEM;
    srv->cfg = *cfg;
    apply_defaults(&srv->cfg);
    srv->nworkers = cfg->workers ? cfg->workers : 1;
    srv->nprocs = cfg->processes;
    *out = srv;
    return 0;
}

void *iop_server_data(const iop_server *srv)
{
    return srv->cfg.data;
}

void *iop_server_handler_ctx(const iop_server *srv)
{
    return srv->cfg.handler->ctx;
}

void iop__server_log(const iop_server *srv, const char *fmt, ...)
{
    if (!srv->cfg.log)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    srv->cfg.log(srv->cfg.log_arg, line);
}

/* ---- listeners --------------------------------------------------------- */

static size_t sockets_per_listener(const iop_server *srv, int kind)
{
    /* Unix sockets cannot share a port: every worker accepts on one fd. */
    if (kind == IOP_ADDR_UNIX)
        return 1;
    return (size_t)srv->nworkers * (srv->nprocs ? srv->nprocs : 1);
}

static int listener_add(iop_server *srv, struct iop__listener *l)
{
    struct iop__listener *ls = realloc(srv->ls, (srv->nls + 1) * sizeof *ls);
    if (!ls)
        return -ENOMEM;
    srv->ls = ls;
    ls[srv->nls] = *l;
    return (int)srv->nls++;
}

static void listener_close(struct iop__listener *l)
{
    for (size_t i = 0; i < l->nfds; i++)
        if (l->fds[i] >= 0)
            close(l->fds[i]);
    if (l->unlink_path && l->addr.u.un.sun_path[0])
        unlink(l->addr.u.un.sun_path);
    free(l->fds);
}

/* Bind the first socket (which fixes port 0 to a real port), then its
 * SO_REUSEPORT siblings on that very address. */
static int listener_bind(iop_server *srv, const iop_addr *addr, struct iop__listener *l)
{
    size_t n = sockets_per_listener(srv, addr->kind);
    struct iop_listen_opts opts = {.reuseport = n > 1};
    memset(l, 0, sizeof *l);
    l->kind = addr->kind;
    l->reuseport = n > 1;
    if (!(l->fds = malloc(n * sizeof *l->fds)))
        return -ENOMEM;
    int rc = iop_listen(addr, &opts, &l->fds[0]);
    if (rc < 0) {
        free(l->fds);
        return rc;
    }
    l->nfds = 1;
    if ((rc = iop_local_addr(l->fds[0], &l->addr)) < 0)
        goto fail;
    l->unlink_path = addr->kind == IOP_ADDR_UNIX;
    for (; l->nfds < n; l->nfds++)
        if ((rc = iop_listen(&l->addr, &opts, &l->fds[l->nfds])) < 0)
            goto fail;
    return 0;
fail:
    listener_close(l);
    return rc;
}

int iop_server_listen(iop_server *srv, const char *text)
{
    if (!srv || !text || srv->running)
        return -EINVAL;
    iop_addr addr;
    int rc = iop_addr_parse(text, &addr);
    if (rc < 0)
        return rc;
    if (addr.kind == IOP_ADDR_UDP ? !srv->cfg.handler->on_datagram
                                  : (srv->cfg.model == IOP_MODEL_EVENT ? !srv->cfg.handler->on_data
                                                                       : !srv->cfg.handler->handle))
        return -EPROTONOSUPPORT; /* the handler cannot serve this kind */
    struct iop__listener l;
    if ((rc = listener_bind(srv, &addr, &l)) < 0)
        return rc;
    if ((rc = listener_add(srv, &l)) < 0)
        listener_close(&l);
    return rc;
}

int iop_server_adopt(iop_server *srv, int fd)
{
    if (!srv || fd < 0 || srv->running)
        return -EINVAL;
    struct iop__listener l;
    memset(&l, 0, sizeof l);
    int rc = iop_local_addr(fd, &l.addr);
    if (rc < 0)
        return rc;
    l.kind = l.addr.kind;
    if (!(l.fds = malloc(sizeof *l.fds)))
        return -ENOMEM;
    l.fds[0] = fd;
    l.nfds = 1; /* shared by every worker: inherited sockets have no siblings */
    if ((rc = listener_add(srv, &l)) < 0)
        free(l.fds);
    return rc;
}

int iop_server_set_tls(iop_server *srv, size_t i, iop_tls_ctx *tls)
{
    if (!srv || srv->running || i >= srv->nls || srv->ls[i].kind == IOP_ADDR_UDP ||
        (tls && !iop_tls_ctx_is_server(tls)))
        return -EINVAL;
    if (tls && !srv->tls_log_last) {
        void *p = mmap(NULL, sizeof *srv->tls_log_last, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return -errno;
        srv->tls_log_last = p;
    }
    srv->ls[i].tls = tls;
    return 0;
}

size_t iop_server_listeners(const iop_server *srv)
{
    return srv->nls;
}

int iop_server_addr(const iop_server *srv, size_t i, iop_addr *out)
{
    if (!srv || i >= srv->nls || !out)
        return -EINVAL;
    *out = srv->ls[i].addr;
    return 0;
}

int iop__listener_fd(const iop_server *srv, size_t i, unsigned w)
{
    const struct iop__listener *l = &srv->ls[i];
    if (l->nfds == 1)
        return l->fds[0];
    return l->fds[(size_t)srv->proc * srv->nworkers + w];
}

void iop__server_refuse(iop_server *srv, unsigned w)
{
    for (size_t i = 0; i < srv->nls; i++)
        if (srv->ls[i].kind != IOP_ADDR_UDP)
            (void)shutdown(iop__listener_fd(srv, i, w), SHUT_RD);
}

void iop_server_free(iop_server *srv)
{
    if (!srv || srv->running)
        return;
    for (size_t i = 0; i < srv->nls; i++)
        listener_close(&srv->ls[i]);
    free(srv->ls);
    free(srv->children);
    if (srv->tls_log_last)
        munmap(srv->tls_log_last, sizeof *srv->tls_log_last);
    free(srv);
}

/* ---- stopping ---------------------------------------------------------- */

int iop_server_stopping(const iop_server *srv)
{
    return atomic_load(&((iop_server *)(uintptr_t)srv)->stopping);
}

int iop_server_model(const iop_server *srv)
{
    return srv->cfg.model;
}

void iop_server_shutdown(iop_server *srv)
{
    int now = atomic_load(&srv->stopping);
    while (now < IOP__NOW && !atomic_compare_exchange_weak(&srv->stopping, &now, now + 1))
        ;
    /* The parent of worker processes passes it on; each child's own
     * handler then escalates the same way. */
    if (srv->children)
        for (unsigned p = 0; p < srv->nprocs; p++)
            if (srv->children[p] > 0)
                kill(srv->children[p], SIGTERM);
    /* Counted before the pointer is read, so that quiesce, having cleared
     * it, knows when no call can still be on its way into the model. */
    atomic_fetch_add(&srv->notifying, 1);
    void (*notify)(iop_server *) = atomic_load(&srv->notify);
    if (notify)
        notify(srv);
    atomic_fetch_sub(&srv->notifying, 1);
}

void iop__server_quiesce(iop_server *srv)
{
    atomic_store(&srv->notify, NULL);
    while (atomic_load(&srv->notifying) > 0)
        sched_yield();
}

static iop_server *signal_server;

static void on_stop_signal(int signum)
{
    int saved = errno;
    (void)signum;
    if (signal_server)
        iop_server_shutdown(signal_server);
    errno = saved;
}

int iop_server_handle_signals(iop_server *srv)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESTART;
    sigfillset(&sa.sa_mask);
    signal_server = srv;
    if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0)
        return -errno;
    return 0;
}

/* ---- running ----------------------------------------------------------- */

void iop__server_run_workers(void *workers, size_t stride, unsigned n, void *(*fn)(void *))
{
    pthread_t *th = n > 1 ? calloc(n, sizeof *th) : NULL;
    unsigned char *started = n > 1 ? calloc(n, 1) : NULL;
    for (unsigned w = 1; w < n && th && started; w++)
        started[w] = pthread_create(&th[w], NULL, fn, (char *)workers + (size_t)w * stride) == 0;
    fn(workers);
    for (unsigned w = 1; w < n && th && started; w++)
        if (started[w])
            pthread_join(th[w], NULL);
    free(th);
    free(started);
}

static int run_model(iop_server *srv)
{
    static const struct iop__reactor_ops *const models[] = {
        [IOP_MODEL_EVENT] = &iop__event_ops,   [IOP_MODEL_ITERATIVE] = &iop__iterative_ops,
        [IOP_MODEL_THREAD] = &iop__thread_ops, [IOP_MODEL_FORK] = &iop__fork_ops,
        [IOP_MODEL_CORO] = &iop__coro_ops,
    };
    return iop__reactor_run(srv, models[srv->cfg.model]);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static pid_t spawn(iop_server *srv, unsigned p)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* The worker process: this copy of the server serves worker p's
     * sockets; a signal reaches its own copy through signal_server. */
    free(srv->children);
    srv->children = NULL;
    srv->proc = (int)p;
    int rc = run_model(srv);
    _exit(rc < 0 ? 2 : 0);
}

/* Which worker process was pid, or -1. */
static int child_index(const iop_server *srv, pid_t pid)
{
    for (unsigned p = 0; p < srv->nprocs; p++)
        if (srv->children[p] == pid)
            return (int)p;
    return -1;
}

static void reap(iop_server *srv, pid_t pid, int status, time_t *started)
{
    int p = child_index(srv, pid);
    if (p < 0)
        return;
    srv->children[p] = 0;
    if (atomic_load(&srv->stopping))
        return;
    iop__server_log(srv, "worker process %d (pid %d) %s %d; restarting", p, (int)pid,
                    WIFSIGNALED(status) ? "killed by signal" : "exited with status",
                    WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    /* One that dies at once would otherwise be forked in a tight loop. */
    if (time(NULL) - started[p] < 1)
        sleep_ms(500);
    started[p] = time(NULL);
    srv->children[p] = spawn(srv, (unsigned)p);
}

static int live_children(const iop_server *srv)
{
    int n = 0;
    for (unsigned p = 0; p < srv->nprocs; p++)
        n += srv->children[p] > 0;
    return n;
}

/* The parent of pre-forked workers: restart the ones that die, and once
 * stopping, wait for them (grace + a margin, then SIGKILL). */
static int supervise(iop_server *srv)
{
    time_t *started = calloc(srv->nprocs, sizeof *started);
    srv->children = calloc(srv->nprocs, sizeof *srv->children);
    if (!started || !srv->children) {
        free(started);
        return -ENOMEM;
    }
    for (unsigned p = 0; p < srv->nprocs; p++) {
        started[p] = time(NULL);
        if ((srv->children[p] = spawn(srv, p)) < 0)
            srv->children[p] = 0;
    }
    long waited_ms = 0, limit_ms = (long)srv->cfg.grace_ms + 2000;
    while (live_children(srv) > 0) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid > 0) {
            reap(srv, pid, status, started);
            continue;
        }
        if (pid < 0 && errno == ECHILD)
            break;
        sleep_ms(20);
        if (atomic_load(&srv->stopping) && (waited_ms += 20) > limit_ms)
            for (unsigned p = 0; p < srv->nprocs; p++)
                if (srv->children[p] > 0)
                    kill(srv->children[p], SIGKILL);
    }
    free(started);
    return 0;
}

int iop_server_run(iop_server *srv)
{
    if (!srv || srv->running)
        return -EINVAL;
    if (!srv->nls)
        return -EDESTADDRREQ;
    srv->running = 1;
    int rc = srv->nprocs ? supervise(srv) : run_model(srv);
    srv->running = 0;
    return rc;
}

/* ---- datagram listeners ------------------------------------------------- */

struct dg_listener {
    iop_server *srv;
    int index;
};

static void dg_recv(iop_dgram *d, ssize_t n, const char *buf, const struct sockaddr *from,
                    unsigned fromlen)
{
    struct dg_listener *dl = iop_dgram_data(d);
    if (n < 0) {
        iop__server_log(dl->srv, "udp listener %d: %s", dl->index, iop_strerror((int)n));
        iop_dgram_close(d);
        return;
    }
    iop_datagram dg = {dl->srv, dl->index, from, fromlen, d};
    dl->srv->cfg.handler->on_datagram(&dg, buf, (size_t)n);
}

static void dg_closed(iop_dgram *d)
{
    free(iop_dgram_data(d));
}

int iop_datagram_reply(iop_datagram *d, const void *buf, size_t len)
{
    return iop_dgram_send(d->handle, buf, len, d->from, d->fromlen);
}

int iop__server_dgram_start(iop_server *srv, iop_loop *loop, unsigned w, iop_dgram **handles)
{
    struct iop_dgram_config cfg = {.on_recv = dg_recv, .on_close = dg_closed};
    for (size_t i = 0; i < srv->nls; i++) {
        handles[i] = NULL;
        if (srv->ls[i].kind != IOP_ADDR_UDP)
            continue;
        /* The handle owns (and closes) its fd; the listener keeps its own. */
        int fd = dup(iop__listener_fd(srv, i, w));
        struct dg_listener *dl = malloc(sizeof *dl);
        if (fd < 0 || !dl) {
            if (fd >= 0)
                close(fd);
            free(dl);
            return -ENOMEM;
        }
        *dl = (struct dg_listener){srv, (int)i};
        int rc = iop_dgram_open(loop, fd, &cfg, &handles[i]);
        if (rc < 0) {
            free(dl);
            return rc;
        }
        iop_dgram_set_data(handles[i], dl);
        if ((rc = iop_dgram_recv_start(handles[i])) < 0)
            return rc;
    }
    return 0;
}

void iop__server_dgram_stop(iop_server *srv, iop_dgram **handles)
{
    for (size_t i = 0; i < srv->nls; i++) {
        if (handles[i])
            iop_dgram_close(handles[i]);
        handles[i] = NULL;
    }
}

/* reload.c - SIGHUP re-reads the TLS certificate and key (see reload.h).
 *
 * The handler only writes a byte to a pipe; a thread of ours reads it and
 * reloads there, where taking locks and allocating is allowed.  Reloads
 * are thread-safe on the context, so connections of any model go on while
 * it happens: new handshakes get the new pair, and a bad pair keeps the old
 * one with a line saying why. */
#include "cli/reload.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/serve.h"

static int hup_fd = -1; /* the pipe's write end, for the handler */

static void on_hup(int sig)
{
    (void)sig;
    int saved = errno;
    char b = 1;
    ssize_t w = write(hup_fd, &b, 1); /* full: a reload is already owed */
    (void)w;
    errno = saved;
}

static void *reloader(void *arg)
{
    struct reload *r = arg;
    char b;
    while (read(r->pipe[0], &b, 1) == 1) {
        struct iop_tls_error err;
        if (iop_tls_ctx_reload(r->ctx, &err) == 0)
            serve_log(NULL, "tls: SIGHUP: certificate and key reloaded");
        else {
            char line[320];
            snprintf(line, sizeof line, "SIGHUP: %s; the old pair stays", err.msg);
            serve_log(NULL, line);
        }
    }
    return NULL;
}

int reload_start(struct reload *r, iop_tls_ctx *ctx)
{
    r->ctx = ctx;
    r->running = 0;
    if (!ctx)
        return 0;
    if (pipe2(r->pipe, O_CLOEXEC) < 0)
        return -errno;
    fcntl(r->pipe[1], F_SETFL, O_NONBLOCK);
    /* The thread takes no signal: one landing on it, asleep in read(2),
     * would wait there for its handler (so it does under TSan), and the
     * server's SIGINT/SIGTERM belong to the threads that serve. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = -pthread_create(&r->thread, NULL, reloader, r);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc < 0) {
        close(r->pipe[0]);
        close(r->pipe[1]);
        return rc;
    }
    r->running = 1;
    hup_fd = r->pipe[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_hup;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGHUP, &sa, NULL);
    return 0;
}

void reload_stop(struct reload *r)
{
    if (!r->running)
        return;
    signal(SIGHUP, SIG_IGN);
    hup_fd = -1;
    close(r->pipe[1]); /* the reader sees EOF */
    pthread_join(r->thread, NULL);
    close(r->pipe[0]);
    r->running = 0;
}

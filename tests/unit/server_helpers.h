/* server_helpers.h - running a blocking-model server in a thread of the test
 * and talking to it through client sockets (test_server_blocking.c,
 * test_thread_server.c).
 *
 * iop_server_run() blocks, so it runs on a thread of its own; the test
 * drives it with ordinary blocking client sockets whose receive timeout
 * bounds every wait.  The fork model's server runs in a process instead
 * (see fixture_fork).  Handlers run in the server's threads (or, with fork,
 * in child processes), so they report through the socket, or (iterative,
 * thread) through atomics read after the server thread is joined. */
#ifndef IOP_SERVER_HELPERS_H
#define IOP_SERVER_HELPERS_H

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ioplex/server.h"
#include "runner.h"

#define CLIENT_TIMEOUT_MS 5000

struct fixture {
    iop_server *srv;
    pthread_t thread; /* the server's thread, or */
    pid_t pid;        /* fork model: the server's process */
    int rc;
    iop_addr addr[3];
};

static inline void *fixture_main(void *arg)
{
    struct fixture *f = arg;
    f->rc = iop_server_run(f->srv);
    return NULL;
}

/* Children of parent (zombies_only: those that are zombies), from /proc. */
static inline int children_of(pid_t parent, int zombies_only)
{
    DIR *d = opendir("/proc");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *fp = fopen(path, "r");
        if (!fp)
            continue; /* gone meanwhile */
        size_t len = fread(buf, 1, sizeof buf - 1, fp);
        fclose(fp);
        buf[len] = '\0';
        char *rp = strrchr(buf, ')'), state;
        int ppid;
        if (rp && sscanf(rp + 1, " %c %d", &state, &ppid) == 2 && ppid == parent &&
            (!zombies_only || state == 'Z'))
            n++;
    }
    closedir(d);
    return n;
}

/* The fork model's server runs in a process of its own: its children would
 * otherwise inherit the test's client sockets (a fork copies every fd), and
 * a client's close would never reach the server.  It stops on SIGTERM
 * (iop_server_handle_signals), and exits 0 only if run returned 0 and no
 * zombie child is left. */
static inline void fixture_fork(struct fixture *f)
{
    fflush(NULL);
    f->pid = fork();
    CHECK(f->pid >= 0);
    if (f->pid > 0)
        return;
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed test leaves no server behind */
    int rc = iop_server_handle_signals(f->srv);
    if (rc == 0)
        rc = iop_server_run(f->srv);
    int z = children_of(getpid(), 1);
    iop_server_free(f->srv);
    _exit(rc < 0 ? 1 : z != 0 ? 3 : 0);
}

/* A server of cfg (backend taken from be) listening on addrs[0..n), on a
 * thread of its own, or (fork model) in a process of its own. */
static inline void fixture_start_addrs(struct fixture *f, const struct iop_test_backend *be,
                                       struct iop_server_config cfg, const char *const *addrs,
                                       int n)
{
    memset(f, 0, sizeof *f);
    cfg.backend = be->kind;
    cfg.loop_flags = be->flags;
    CHECK_OK(iop_server_new(&cfg, &f->srv));
    for (int i = 0; i < n; i++) {
        CHECK_EQ(iop_server_listen(f->srv, addrs[i]), i);
        CHECK_OK(iop_server_addr(f->srv, (size_t)i, &f->addr[i]));
    }
    f->rc = -1;
    /* Worker processes, like the fork model's children, would inherit the
     * test's client sockets if the server ran in the test's process. */
    if (cfg.model == IOP_MODEL_FORK || cfg.processes > 0)
        fixture_fork(f);
    else
        CHECK(pthread_create(&f->thread, NULL, fixture_main, f) == 0);
}

/* nlisten TCP listeners on 127.0.0.1. */
static inline void fixture_start(struct fixture *f, const struct iop_test_backend *be,
                                 struct iop_server_config cfg, int nlisten)
{
    static const char *const tcp[] = {"127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"};
    fixture_start_addrs(f, be, cfg, tcp, nlisten);
}

/* iop_server_shutdown(): graceful the first time, now the second. */
static inline void fixture_shutdown(struct fixture *f)
{
    if (f->pid > 0)
        CHECK(kill(f->pid, SIGTERM) == 0);
    else
        iop_server_shutdown(f->srv);
}

/* Wait for the server to end (after a shutdown) and free it; run must have
 * returned 0.  Returns how long the wait took, in ms. */
static inline long long fixture_join(struct fixture *f)
{
    long long t0 = iop_test_now_ms();
    if (f->pid > 0) {
        int status = 0;
        pid_t r;
        while ((r = waitpid(f->pid, &status, WNOHANG)) == 0 && iop_test_now_ms() - t0 < 20000)
            usleep(2000);
        if (r == 0) {
            kill(f->pid, SIGKILL);
            waitpid(f->pid, &status, 0);
            iop_test_fail(__FILE__, __LINE__, "the server process did not stop");
        }
        CHECK(r == f->pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            iop_test_fail(__FILE__, __LINE__, "the server process ended with status 0x%x%s",
                          (unsigned)status,
                          WIFEXITED(status) && WEXITSTATUS(status) == 3 ? " (a zombie)" : "");
        f->rc = 0;
    } else {
        CHECK(pthread_join(f->thread, NULL) == 0);
    }
    long long took = iop_test_now_ms() - t0;
    CHECK_EQ(f->rc, 0);
    iop_server_free(f->srv);
    return took;
}

static inline void fixture_stop(struct fixture *f)
{
    fixture_shutdown(f);
    fixture_join(f);
}

/* A connected blocking client of listener i; receives time out. */
static inline int client(const struct fixture *f, int i)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct timeval tv = {CLIENT_TIMEOUT_MS / 1000, 0};
    CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    CHECK(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0);
    CHECK(connect(fd, &f->addr[i].u.sa, f->addr[i].len) == 0);
    return fd;
}

static inline void put(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n > 0);
        p += n;
        len -= (size_t)n;
    }
}

static inline void puts_(int fd, const char *s)
{
    put(fd, s, strlen(s));
}

/* One recv, EINTR retried: > 0, 0 at EOF, -errno (-EAGAIN: timed out). */
static inline ssize_t get_some(int fd, void *buf, size_t len)
{
    for (;;) {
        ssize_t n = recv(fd, buf, len, 0);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return -errno;
    }
}

/* Read through '\n' into buf (NUL-terminated); fails the test on EOF or
 * timeout. */
static inline void get_line(int fd, char *buf, size_t max)
{
    size_t n = 0;
    while (n + 1 < max) {
        ssize_t r = get_some(fd, buf + n, 1);
        if (r <= 0)
            iop_test_fail(__FILE__, __LINE__, "get_line: %s after \"%.*s\"",
                          r == 0 ? "EOF" : iop_strerror((int)r), (int)n, buf);
        if (buf[n++] == '\n')
            break;
    }
    buf[n] = '\0';
}

static inline void expect_line(int fd, const char *want)
{
    char buf[256];
    get_line(fd, buf, sizeof buf);
    if (strcmp(buf, want) != 0)
        iop_test_fail(__FILE__, __LINE__, "got \"%s\", want \"%s\"", buf, want);
}

/* The peer closes (EOF or reset) within the client timeout. */
static inline void expect_eof(int fd)
{
    char c;
    ssize_t r = get_some(fd, &c, 1);
    if (r > 0)
        iop_test_fail(__FILE__, __LINE__, "expected EOF, got byte 0x%02x", (unsigned char)c);
    CHECK(r == 0 || r == -ECONNRESET);
}

/* Nothing arrives (and no EOF) within ms. */
static inline void expect_silence(int fd, int ms)
{
    struct pollfd p = {fd, POLLIN, 0};
    int r;
    while ((r = poll(&p, 1, ms)) < 0 && errno == EINTR)
        ;
    CHECK_EQ(r, 0);
}

#endif

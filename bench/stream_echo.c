/* stream_echo.c - a raw-echo micro-server on the stream layer, for
 * ../shared/peers/run-echo.sh (OURS_ECHO_CMD).
 *
 *   stream_echo -l 127.0.0.1:PORT [--backend B] [--edge]
 *
 * Everything received is written back; on EOF the rest is flushed, then the
 * connection is closed.  Accepting uses a plain fd watcher so that this
 * measures the stream layer alone. */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ioplex/stream.h"

static void on_read(iop_stream *s, ssize_t n, const char *buf)
{
    if (n > 0) {
        iop_stream_write(s, buf, (size_t)n);
        return;
    }
    if (n == 0 && iop_stream_shutdown(s) == 0)
        return; /* the peer reads the rest, then closes */
    iop_stream_close(s);
}

static void accept_cb(iop_io *w, unsigned revents)
{
    iop_stream_ctx *ctx = w->data;
    (void)revents;
    for (int i = 0; i < 64; i++) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        iop_stream *s;
        if (iop_stream_open(ctx, fd, &s) == 0)
            iop_stream_read_start(s);
    }
}

static void stop_cb(iop_signal *sig, int signum)
{
    (void)signum;
    iop_loop_stop(sig->loop);
}

static int listen_tcp(const char *addr)
{
    char host[64];
    int port;
    if (sscanf(addr, "%63[^:]:%d", host, &port) != 2)
        return -1;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t len = sizeof sin;
    if (bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(fd, 4096) < 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) < 0)
        return -1;
    printf("listening %s:%d\n", host, ntohs(sin.sin_port));
    fflush(stdout);
    return fd;
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1:8001", *backend = "auto";
    unsigned flags = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-l") && i + 1 < argc)
            addr = argv[++i];
        else if (!strcmp(argv[i], "--backend") && i + 1 < argc)
            backend = argv[++i];
        else if (!strcmp(argv[i], "--edge"))
            flags |= IOP_LOOP_EDGE;
        else if (strcmp(argv[i], "--quiet")) {
            fprintf(stderr, "usage: stream_echo [-l HOST:PORT] [--backend B] [--edge]\n");
            return 2;
        }
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    iop_loop *loop;
    int rc = iop_loop_new(iop_backend_parse(backend), flags, &loop);
    if (rc < 0) {
        fprintf(stderr, "stream_echo: %s: %s\n", backend, iop_strerror(rc));
        return 2;
    }
    int lfd = listen_tcp(addr);
    if (lfd < 0) {
        fprintf(stderr, "stream_echo: cannot listen on %s\n", addr);
        return 2;
    }
    struct iop_stream_config cfg = {.on_read = on_read};
    iop_stream_ctx *ctx;
    iop_stream_ctx_new(loop, &cfg, &ctx);
    iop_io lw;
    iop_io_init(&lw, lfd, accept_cb);
    lw.data = ctx;
    iop_io_start(loop, &lw, IOP_READ | IOP_LEVEL);
    iop_signal sint, sterm;
    iop_signal_start(loop, &sint, SIGINT, stop_cb);
    iop_signal_start(loop, &sterm, SIGTERM, stop_cb);
    fprintf(stderr, "stream_echo: backend %s%s\n", iop_loop_backend(loop),
            flags & IOP_LOOP_EDGE ? " (edge)" : "");
    iop_loop_run(loop, IOP_RUN_DEFAULT);
    return 0;
}

/* loop_echo.c - a raw TCP echo server written on the loop layer alone.
 *
 *   loop_echo [HOST:PORT] [BACKEND]      (default 127.0.0.1:8001, auto)
 *
 * It shows the readiness style the stream layer builds on: read until
 * EAGAIN, write at once, and only when the peer is slow keep the rest and
 * wait for writability instead of reading more (so memory per client stays
 * bounded by one buffer).  Prints "listening HOST:PORT" once bound. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ioplex/loop.h"

struct client {
    iop_io io;
    char buf[16384];
    size_t len, off; /* unsent bytes are buf[off..len) */
};

static void client_close(struct client *c)
{
    iop_io_stop(&c->io);
    close(c->io.fd);
    free(c);
}

/* Send what is pending; 1 if all of it went, 0 if the peer is slow, -1 on error. */
static int flush(struct client *c)
{
    while (c->off < c->len) {
        ssize_t n = send(c->io.fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN ? 0 : -1;
        c->off += (size_t)n;
    }
    c->off = c->len = 0;
    return 1;
}

static void client_cb(iop_io *w, unsigned revents)
{
    struct client *c = (struct client *)w;
    int rc = flush(c);
    while (rc == 1 && (revents & IOP_READ)) {
        ssize_t n = recv(w->fd, c->buf, sizeof c->buf, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            client_close(c);
            return;
        }
        if (n < 0)
            break;
        c->len = (size_t)n;
        rc = flush(c);
    }
    if (rc < 0) {
        client_close(c);
        return;
    }
    /* Slow peer: stop reading until what we owe it has gone. */
    iop_io_modify(w, rc == 1 ? IOP_READ : IOP_WRITE);
}

static void accept_cb(iop_io *w, unsigned revents)
{
    (void)revents;
    for (int i = 0; i < 64; i++) { /* bounded, so a flood cannot starve clients */
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        struct client *c = calloc(1, sizeof *c);
        iop_io_init(&c->io, fd, client_cb);
        if (iop_io_start(w->loop, &c->io, IOP_READ) < 0) {
            close(fd);
            free(c);
        }
    }
}

static void stop_cb(iop_signal *s, int signum)
{
    (void)signum;
    iop_loop_stop(s->loop);
}

static int listen_on(const char *addr)
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
    if (bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(fd, 511) < 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) < 0) {
        close(fd);
        return -1;
    }
    printf("listening %s:%d\n", host, ntohs(sin.sin_port));
    fflush(stdout);
    return fd;
}

int main(int argc, char **argv)
{
    const char *addr = argc > 1 ? argv[1] : "127.0.0.1:8001";
    int kind = iop_backend_parse(argc > 2 ? argv[2] : "auto");
    iop_loop *loop;
    int rc = kind < 0 ? kind : iop_loop_new(kind, 0, &loop);
    if (rc < 0) {
        fprintf(stderr, "loop_echo: %s\n", iop_strerror(rc));
        return 2;
    }
    int lfd = listen_on(addr);
    if (lfd < 0) {
        fprintf(stderr, "loop_echo: cannot listen on %s\n", addr);
        return 2;
    }
    iop_io lw;
    iop_signal sint, sterm;
    iop_io_init(&lw, lfd, accept_cb);
    iop_io_start(loop, &lw, IOP_READ);
    iop_signal_start(loop, &sint, SIGINT, stop_cb);
    iop_signal_start(loop, &sterm, SIGTERM, stop_cb);
    iop_loop_run(loop, IOP_RUN_DEFAULT);
    return 0; /* the process exit closes the clients */
}

/* thread_echo.c - the least a thread-per-connection echo server can do:
 * blocking sockets, one thread per connection, recv then send, nothing
 * else (no timeouts, no stop, no limits).  It is the ceiling for
 * `ioplex echo --model thread`: what the model costs when everything the
 * framework adds is taken away.
 *
 *   out/thread_echo PORT      prints "listening 127.0.0.1:PORT", serves forever
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static void *serve(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[16384];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof buf, 0)) > 0) {
        for (ssize_t off = 0, w; off < n; off += w)
            if ((w = send(fd, buf + off, (size_t)(n - off), MSG_NOSIGNAL)) <= 0)
                goto out;
    }
out:
    close(fd);
    return NULL;
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 0, one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0 ||
        getsockname(ls, (struct sockaddr *)&a, &alen) < 0) {
        perror("thread_echo");
        return 1;
    }
    printf("listening 127.0.0.1:%d\n", ntohs(a.sin_port));
    fflush(stdout);
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 65536);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0)
            continue;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t t;
        if (pthread_create(&t, &at, serve, (void *)(intptr_t)fd) != 0)
            close(fd);
    }
}

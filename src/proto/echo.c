/* echo.c - the echo protocol in both handler styles (see ioplex/proto.h).
 *
 * Event style keeps no state for a connection between messages: a partial
 * line or frame is the only thing that allocates, and it is freed as soon
 * as the message completes, so an idle echo connection costs the stream
 * alone.  A write that reports "full" pauses reading until on_drain.
 *
 * A graceful stop must finish the replies in flight, and closing a socket
 * with unread input makes the kernel send a reset, which destroys them (TCP
 * drops what it has not sent yet; the peer's reads fail with ECONNRESET).
 * So a stopping event connection goes on echoing until its input pauses,
 * then sends FIN after the last reply and reads and discards what still
 * comes until the close can hurt nothing (see stop_tick).  The server's
 * grace period bounds it all. */
#include <errno.h>
#include <linux/sockios.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "ioplex/proto.h"
#include "proto/framing.h"

#define STACK_COPY 4096

static size_t max_line(const struct iop_echo_config *cfg)
{
    return cfg->max_line ? cfg->max_line : 65536;
}

static size_t max_frame(const struct iop_echo_config *cfg)
{
    return cfg->max_frame ? cfg->max_frame : 16u << 20;
}

static const struct iop_echo_config *cfg_of_stream(const iop_stream *s)
{
    return iop_server_handler_ctx(iop_stream_server(s));
}

static void echo_log(const struct iop_echo_config *cfg, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void echo_log(const struct iop_echo_config *cfg, const char *fmt, ...)
{
    if (!cfg->log)
        return;
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    cfg->log(cfg->log_arg, line);
}

static void upper_copy(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = src[i] >= 'a' && src[i] <= 'z' ? (char)(src[i] - 'a' + 'A') : src[i];
}

/* A reply: [frame header] [prefix] payload, upper-cased if asked.  Calls
 * out with the pieces; the payload copy lives on the stack when small. */
typedef int (*reply_fn)(void *arg, const struct iovec *iov, int n);

static int reply(const struct iop_echo_config *cfg, const char *p, size_t n, reply_fn out,
                 void *arg)
{
    size_t plen = cfg->prefix ? strlen(cfg->prefix) : 0;
    unsigned char hdr[4];
    struct iovec iov[3];
    int k = 0;
    if (cfg->mode == IOP_ECHO_FRAMED) {
        uint32_t len = (uint32_t)(plen + n);
        hdr[0] = (unsigned char)(len >> 24);
        hdr[1] = (unsigned char)(len >> 16);
        hdr[2] = (unsigned char)(len >> 8);
        hdr[3] = (unsigned char)len;
        iov[k++] = (struct iovec){hdr, 4};
    }
    if (plen)
        iov[k++] = (struct iovec){(void *)(uintptr_t)cfg->prefix, plen};
    char small[STACK_COPY], *copy = NULL;
    if (cfg->upper && n) {
        copy = n <= sizeof small ? small : malloc(n);
        if (!copy)
            return -ENOMEM;
        upper_copy(copy, p, n);
        p = copy;
    }
    iov[k++] = (struct iovec){(void *)(uintptr_t)p, n};
    int rc = out(arg, iov, k);
    if (copy && copy != small)
        free(copy);
    return rc;
}

/* ---- event style ------------------------------------------------------- */

/* A stopping connection is looked at every STOP_TICK_MS. */
#define STOP_TICK_MS 10

enum { RUNNING, STOP_ECHO, STOP_LINGER };

/* A connection's state between calls: a message left half-read, or a
 * graceful stop under way (from on_stop until the close). */
struct partial {
    struct iop_lines lines;
    struct iop_frames frames;
    int stop;   /* RUNNING, STOP_ECHO (replying still), STOP_LINGER (FIN sent) */
    int family; /* of the socket, once stopping */
    int seen;   /* bytes arrived since the last tick */
    int quiet;  /* ticks in a row with nothing owed */
    iop_timer tick;
};

static int stream_out(void *arg, const struct iovec *iov, int n)
{
    iop_stream *s = arg;
    int rc = iop_stream_writev(s, iov, n);
    if (rc == 1)
        (void)iop_stream_read_stop(s); /* a slow reader: stop producing */
    return rc < 0 ? rc : 0;
}

static int emit_stream(void *arg, const char *msg, size_t len)
{
    iop_stream *s = arg;
    return reply(cfg_of_stream(s), msg, len, stream_out, s);
}

static void ev_open(iop_stream *s)
{
    const struct iop_echo_config *cfg = cfg_of_stream(s);
    if (!cfg->greeting)
        return;
    struct iop_echo_config g = *cfg;
    g.prefix = NULL;
    g.upper = 0;
    (void)reply(&g, cfg->greeting, strlen(cfg->greeting), stream_out, s);
}

static int feed(const struct iop_echo_config *cfg, struct partial *st, iop_stream *s,
                const char *buf, size_t n)
{
    if (cfg->mode == IOP_ECHO_LINES)
        return iop_lines_feed(&st->lines, buf, n, max_line(cfg), emit_stream, s);
    uint32_t declared = 0;
    int rc = iop_frames_feed(&st->frames, buf, n, max_frame(cfg), emit_stream, s, &declared);
    if (rc == -EMSGSIZE)
        echo_log(cfg, "frame of %u bytes over --max-frame %zu: connection closed", declared,
                 max_frame(cfg));
    return rc;
}

static int partial_empty(const struct partial *st)
{
    return !st->lines.len && !st->frames.hdrlen;
}

static void ev_data(iop_stream *s, const char *buf, size_t n)
{
    const struct iop_echo_config *cfg = cfg_of_stream(s);
    struct partial *st = iop_stream_data(s);
    if (st && st->stop) {
        st->seen = 1;
        if (st->stop == STOP_LINGER)
            return; /* after our FIN: read only so that the close resets nothing */
    }
    if (cfg->mode == IOP_ECHO_RAW) {
        (void)reply(cfg, buf, n, stream_out, s);
        return;
    }
    /* State lives on the stack unless a message is left half-read. */
    struct partial local = {0};
    int rc = feed(cfg, st ? st : &local, s, buf, n);
    if (!st && rc == 0 && !partial_empty(&local)) {
        if ((st = malloc(sizeof *st))) {
            *st = local;
            iop_stream_set_data(s, st);
            return;
        }
        rc = -ENOMEM;
    }
    if (!st)
        st = &local;
    if (rc != 0 || partial_empty(st)) {
        iop_lines_free(&st->lines);
        iop_frames_free(&st->frames);
        if (st != &local && !st->stop) {
            free(st);
            iop_stream_set_data(s, NULL);
        }
    }
    if (rc < 0)
        iop_stream_close(s);
}

static void ev_drain(iop_stream *s)
{
    (void)iop_stream_read_start(s);
}

static void ev_close(iop_stream *s)
{
    struct partial *st = iop_stream_data(s);
    if (st) {
        if (st->stop)
            iop_timer_stop(&st->tick);
        iop_lines_free(&st->lines);
        iop_frames_free(&st->frames);
        free(st);
    }
}

/* ---- graceful stop, event style ------------------------------------------ */

static int sock_ioctl(int fd, unsigned long req)
{
    int n = 0;
    return ioctl(fd, req, &n) < 0 ? -1 : n;
}

/* Closing now resets nothing the peer still needs: over TCP everything we
 * sent, FIN included, is acknowledged (SIOCOUTQ counts the unacknowledged
 * bytes), so the replies are in the peer's hands and a reset can only fail
 * its later writes; a Unix socket keeps what it delivered whatever happens,
 * but reports ECONNRESET to the peer if we close with input unread. */
static int close_is_safe(const struct partial *st, int fd)
{
    if (st->family == AF_UNIX)
        return sock_ioctl(fd, SIOCINQ) == 0;
    return sock_ioctl(fd, SIOCOUTQ) == 0;
}

/* Nothing is owed while nothing arrived since the last tick, nothing is
 * queued and the kernel holds no unread input.  Two quiet ticks in a row,
 * with the loop's wait between them, so that bytes io_uring has already
 * taken from the socket but not yet handed to us count as arrived. */
static void stop_tick(iop_timer *t)
{
    iop_stream *s = t->data;
    struct partial *st = iop_stream_data(s);
    int fd = iop_stream_fd(s);
    if (st->stop == STOP_LINGER) {
        if (close_is_safe(st, fd))
            iop_stream_close(s);
        return;
    }
    int owed = st->seen || iop_stream_queued(s) || sock_ioctl(fd, SIOCINQ) != 0;
    st->seen = 0;
    st->quiet = owed ? 0 : st->quiet + 1;
    if (st->quiet < 2)
        return;
    /* A message left half-read never completes now. */
    iop_lines_free(&st->lines);
    iop_frames_free(&st->frames);
    st->stop = STOP_LINGER;
    if (iop_stream_shutdown(s) < 0 || iop_stream_read_start(s) < 0)
        iop_stream_close(s);
}

static void ev_stop(iop_stream *s)
{
    struct partial *st = iop_stream_data(s);
    if (!st && (st = calloc(1, sizeof *st)))
        iop_stream_set_data(s, st);
    int family = 0;
    socklen_t len = sizeof family;
    if (!st || getsockopt(iop_stream_fd(s), SOL_SOCKET, SO_DOMAIN, &family, &len) < 0) {
        iop_stream_end(s);
        return;
    }
    st->stop = STOP_ECHO;
    st->family = family;
    iop_timer_init(&st->tick, stop_tick);
    st->tick.data = s;
    if (iop_timer_start(iop_stream_loop(s), &st->tick, STOP_TICK_MS, STOP_TICK_MS) < 0)
        iop_stream_end(s);
}

/* ---- blocking style ---------------------------------------------------- */

static int conn_out(void *arg, const struct iovec *iov, int n)
{
    iop_conn *c = arg;
    for (int i = 0; i < n; i++) {
        int rc = iop_conn_sendall(c, iov[i].iov_base, iov[i].iov_len);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static void handle_raw(const struct iop_echo_config *cfg, iop_conn *c)
{
    char buf[16384];
    ssize_t n;
    while ((n = iop_conn_recv(c, buf, sizeof buf)) > 0)
        if (reply(cfg, buf, (size_t)n, conn_out, c) < 0)
            return;
}

static void handle_lines(const struct iop_echo_config *cfg, iop_conn *c)
{
    size_t max = max_line(cfg) + 1; /* the line and its '\n' */
    char *line = malloc(max);
    ssize_t n;
    while (line && (n = iop_conn_readline(c, line, max)) > 0) {
        if (line[n - 1] != '\n')
            break; /* the last line, unterminated: no reply */
        if (reply(cfg, line, (size_t)n, conn_out, c) < 0)
            break;
    }
    free(line);
}

static void handle_frames(const struct iop_echo_config *cfg, iop_conn *c)
{
    unsigned char hdr[4];
    while (iop_conn_recv_exact(c, hdr, 4) == 4) {
        uint32_t len =
            (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
        if (len > max_frame(cfg)) {
            echo_log(cfg, "frame of %u bytes over --max-frame %zu: connection closed", len,
                     max_frame(cfg));
            return;
        }
        char *p = malloc(len ? len : 1);
        int ok = p && (len == 0 || iop_conn_recv_exact(c, p, len) == (ssize_t)len) &&
                 reply(cfg, p, len, conn_out, c) == 0;
        free(p);
        if (!ok)
            return;
    }
}

static void bl_handle(iop_conn *c)
{
    const struct iop_echo_config *cfg = iop_server_handler_ctx(iop_conn_server(c));
    if (cfg->greeting) {
        struct iop_echo_config g = *cfg;
        g.prefix = NULL;
        g.upper = 0;
        if (reply(&g, cfg->greeting, strlen(cfg->greeting), conn_out, c) < 0)
            return;
    }
    if (cfg->mode == IOP_ECHO_LINES)
        handle_lines(cfg, c);
    else if (cfg->mode == IOP_ECHO_FRAMED)
        handle_frames(cfg, c);
    else
        handle_raw(cfg, c);
}

/* ---- datagrams --------------------------------------------------------- */

static int dgram_out(void *arg, const struct iovec *iov, int n)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    char *buf = malloc(total ? total : 1), *p = buf;
    if (!buf)
        return -ENOMEM;
    for (int i = 0; i < n; i++) {
        memcpy(p, iov[i].iov_base, iov[i].iov_len);
        p += iov[i].iov_len;
    }
    int rc = iop_datagram_reply(arg, buf, total);
    free(buf);
    return rc;
}

static void on_datagram(iop_datagram *d, const char *buf, size_t n)
{
    const struct iop_echo_config *cfg = iop_server_handler_ctx(d->server);
    struct iop_echo_config u = *cfg;
    u.mode = IOP_ECHO_RAW; /* one datagram back: no frame header */
    (void)reply(&u, buf, n, dgram_out, d);
}

int iop_echo_handler(const struct iop_echo_config *cfg, struct iop_handler *h)
{
    if (!cfg || !h || cfg->mode < IOP_ECHO_RAW || cfg->mode > IOP_ECHO_FRAMED)
        return -EINVAL;
    if (cfg->mode == IOP_ECHO_RAW && cfg->prefix)
        return -EINVAL; /* raw bytes have no message to put it before */
    memset(h, 0, sizeof *h);
    h->on_open = ev_open;
    h->on_data = ev_data;
    h->on_drain = ev_drain;
    h->on_close = ev_close;
    h->on_stop = ev_stop;
    h->handle = bl_handle;
    h->on_datagram = on_datagram;
    h->ctx = (void *)(uintptr_t)cfg; /* read back only as const */
    return 0;
}

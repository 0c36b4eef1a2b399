/* http_log.c - the access log: one Common Log Format line per request,
 * every logged byte outside printable ASCII (and '"', '\\') escaped.
 * Event workers gather the lines and write them once per loop iteration;
 * blocking ones write each line at once. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "proto/http_srv.h"

static void flush_cb(iop_defer *d)
{
    http_log_flush(d->data);
}

static const char *clf_now(struct http_worker *w)
{
    static const char mon[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = time(NULL);
    if (t != w->clf_t) {
        struct tm tm;
        gmtime_r(&t, &tm);
        w->clf_t = t;
        snprintf(w->clf, sizeof w->clf, "%02d/%s/%04d:%02d:%02d:%02d +0000", tm.tm_mday,
                 mon[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    }
    return w->clf;
}

void http_peer_name(int fd, char *out, size_t outsz)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    snprintf(out, outsz, "-");
    if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
        return;
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, out, (socklen_t)outsz);
    else if (ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, out, (socklen_t)outsz);
}

#define LOG_LINE_MAX 2048 /* request-line bytes logged; escaping may make 4x */
#define LOG_HEAD     88   /* peer (<= 45), date (26), separators */
#define LOG_TAIL     40   /* quote, status, bytes (<= 20), LF */
#define LOG_EXTRA    (LOG_HEAD + LOG_TAIL)

/* One CLF line into out (4 * n + LOG_EXTRA bytes); its length.  The request
 * line is escaped: a client must not be able to forge fields with '"' or
 * send control sequences to whoever reads the log. */
static size_t log_line(struct http_worker *w, char *out, const char *host, const char *line,
                       size_t n, int status, const char *bytes)
{
    size_t len = (size_t)snprintf(out, LOG_HEAD, "%s - - [%s] \"", host, clf_now(w));
    len += line ? http_log_escape(line, n, out + len) : (size_t)snprintf(out + len, 2, "-");
    len += (size_t)snprintf(out + len, LOG_TAIL, "\" %d %s\n", status, bytes);
    return len;
}

void http_log(struct http_worker *w, const char *host, const struct http_req *req, int err,
              const struct http_resp *r)
{
    const struct iop_http_config *cfg = &w->http->cfg;
    if (!cfg->access_log)
        return;
    char bytes[24] = "-";
    if (r->log_bytes)
        snprintf(bytes, sizeof bytes, "%llu", (unsigned long long)r->log_bytes);
    int show = req && !err;
    size_t linelen = show ? (req->line.n < LOG_LINE_MAX ? req->line.n : LOG_LINE_MAX) : 0;
    const char *line = show ? req->line.p : NULL;
    size_t need = 4 * linelen + LOG_EXTRA;
    if (!w->loop) {
        char buf[4 * LOG_LINE_MAX + LOG_EXTRA];
        size_t n = log_line(w, buf, host, line, linelen, r->status, bytes);
        cfg->access_log(cfg->access_log_arg, buf, n);
        return;
    }
    if (w->loglen + need > w->logcap) {
        size_t cap = w->logcap ? w->logcap * 2 : 16384;
        while (cap < w->loglen + need)
            cap *= 2;
        char *p = realloc(w->log, cap);
        if (!p)
            return;
        w->log = p;
        w->logcap = cap;
    }
    w->loglen += log_line(w, w->log + w->loglen, host, line, linelen, r->status, bytes);
    if (w->loglen > 65536)
        http_log_flush(w);
    else
        (void)iop_defer_start(w->loop, &w->flush, flush_cb);
}

void http_log_flush(struct http_worker *w)
{
    const struct iop_http_config *cfg = &w->http->cfg;
    if (w->loglen && cfg->access_log)
        cfg->access_log(cfg->access_log_arg, w->log, w->loglen);
    w->loglen = 0;
}

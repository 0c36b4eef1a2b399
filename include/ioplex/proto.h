/* ioplex/proto.h - the stock protocols, as server handlers.
 *
 * Each protocol fills a struct iop_handler with both styles (event-style
 * callbacks and a blocking-style handle()), so it runs under every model.
 * Its configuration travels in the handler (iop_handler.ctx) and must
 * outlive the server; the server's data (iop_server_config.data) stays
 * yours.
 *
 * Echo (SPEC §2 `ioplex echo`):
 *   raw      every byte back, in order
 *   lines    a reply per '\n'-terminated line; a line over max_line bytes
 *            closes the connection; a last line without '\n' at EOF gets
 *            no reply
 *   framed   4-byte big-endian length N, then N bytes (N = 0 allowed); one
 *            reply frame per whole message; a declared N over max_frame
 *            closes the connection and logs a line
 * upper (ASCII letters of the payload) and prefix (lines and frames only)
 * shape the replies; greeting is sent once on connect (raw bytes, or one
 * frame when framed); a udp: listener answers each datagram with one.
 * A graceful stop finishes what is in flight: every byte received before
 * it is echoed (within the grace), then the server closes its side (FIN)
 * and, in the event model, reads and discards what still comes until the
 * FIN is acknowledged or the peer closes, so that no reset destroys the
 * last replies.  A message left half-read when the input pauses gets no
 * reply.
 */
#ifndef IOPLEX_PROTO_H
#define IOPLEX_PROTO_H

#include <stddef.h>

#include "ioplex/server.h"

#ifdef __cplusplus
extern "C" {
#endif

enum iop_echo_mode { IOP_ECHO_RAW = 0, IOP_ECHO_LINES, IOP_ECHO_FRAMED };

struct iop_echo_config {
    int mode;             /* IOP_ECHO_* */
    size_t max_line;      /* lines: 0 = 65536 */
    size_t max_frame;     /* framed: 0 = 16 MiB */
    int upper;            /* upper-case ASCII letters of the payload */
    const char *prefix;   /* NULL or text put before each reply */
    const char *greeting; /* NULL or text sent once on connect */
    /* Diagnostics (a frame too large...), a line without newline. */
    void (*log)(void *log_arg, const char *line);
    void *log_arg;
};

/* Check cfg (prefix with raw mode is -EINVAL) and fill *h with the echo
 * handler, which carries cfg (h->ctx). */
int iop_echo_handler(const struct iop_echo_config *cfg, struct iop_handler *h);

/* ---- HTTP/1.1 static files (SPEC §2 `ioplex http`) ---------------------
 *
 * GET and HEAD of the files under one directory, for every model: event
 * connections parse straight from the read buffer and send each file with
 * sendfile(2) (on io_uring too); blocking-style handlers do
 * the same through iop_conn.  Nothing outside the directory is ever served:
 * targets are percent-decoded, dot segments applied (never above the root)
 * and every file is opened with openat2(RESOLVE_BENEATH), which refuses
 * symlinks and ".." that lead outside.  Reactor threads keep an open-file
 * cache (fd, stat, validators) revalidated with fstat on every hit and
 * reopened after a second, so a changed file is seen at once and a
 * replaced one within a second. */
typedef struct iop_http iop_http;

struct iop_http_config {
    const char *root;           /* the directory served */
    int no_listing;             /* a directory without index.html: 403 */
    size_t max_header;          /* request line + headers; 0: 8192 */
    unsigned header_timeout_ms; /* a head must be complete within; 0: 10000 */
    /* One Common Log Format line per request, with its newline; NULL: no
     * access log.  Event workers hand over several lines at once. */
    void (*access_log)(void *arg, const char *lines, size_t len);
    void *access_log_arg;
    /* Access-Control-Allow-Origin: * on every response, and OPTIONS (a
     * CORS preflight) answered 204 with Access-Control-Allow-Methods:
     * GET, HEAD and the requested headers echoed once they are tokens. */
    int cors;
    /* nheaders lines "Name: value" added to every response (each checked
     * by iop_http_header_check). */
    const char *const *headers;
    size_t nheaders;
    const char *cache_control; /* Cache-Control of files; NULL: none */
    /* Content-Type of files whose extension is unknown; NULL:
     * application/octet-stream. */
    const char *default_type;
    /* Compress files whose type is text/..., JSON, JavaScript, SVG, XML or
     * wasm, up to compress_max bytes (0: 1 MiB), with gzip, zstd and
     * brotli as clients accept them: once per version of a file, kept in
     * memory (at most compress_memory bytes in all, 0: 64 MiB; least
     * recently used copies are dropped) when a copy saves >= 10 %. */
    int compress;
    size_t compress_max, compress_memory;
};

/* Is line a header that may be added to responses: "Name: value", Name a
 * token, value of visible characters, spaces and tabs (no CR, LF or other
 * control)?  0, or -EINVAL.  iop_http_header_value_check: the value alone. */
int iop_http_header_check(const char *line);
int iop_http_header_value_check(const char *value);

/* Open cfg->root (-ENOTDIR, -ENOENT, ...) and make the server state;
 * -EINVAL for a header, Cache-Control or type that does not pass the
 * checks above. */
int iop_http_new(const struct iop_http_config *cfg, iop_http **out);
/* Fill *h with the HTTP handler, which carries http (h->ctx). */
void iop_http_handler(iop_http *http, struct iop_handler *h);
/* After the server that used it is freed. */
void iop_http_free(iop_http *http);

#ifdef __cplusplus
}
#endif

#endif

/* ioplex/proto.h - the stock protocols, as server handlers.
 *
 * Each protocol fills a struct iop_handler with both styles (event-style
 * callbacks and a blocking-style handle()), so it runs under every model.
 * Its configuration travels as the server's data (iop_server_config.data)
 * and must outlive the server.
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
 * handler.  Pass cfg as the server's data. */
int iop_echo_handler(const struct iop_echo_config *cfg, struct iop_handler *h);

#ifdef __cplusplus
}
#endif

#endif

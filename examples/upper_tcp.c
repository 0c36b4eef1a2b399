/* upper_tcp.c - an upper-casing TCP server on the event model.
 *   upper_tcp [ADDR]        (default 127.0.0.1:0; prints "listening ADDR") */
#include <ctype.h>
#include <stdio.h>

#include "ioplex/server.h"

static void on_data(iop_stream *s, const char *buf, size_t n)
{
    char up[65536]; /* a read is at most 64 KiB */
    for (size_t i = 0; i < n; i++)
        up[i] = (char)toupper((unsigned char)buf[i]);
    iop_stream_write(s, up, n);
}

int main(int argc, char **argv)
{
    static const struct iop_handler h = {.on_data = on_data};
    struct iop_server_config cfg = {.handler = &h};
    iop_server *srv;
    iop_addr addr;
    char text[IOP_ADDR_STRLEN];
    if (iop_server_new(&cfg, &srv) < 0 ||
        iop_server_listen(srv, argc > 1 ? argv[1] : "127.0.0.1:0") < 0)
        return 2;
    iop_server_addr(srv, 0, &addr);
    iop_addr_format(&addr, text, sizeof text);
    printf("listening %s\n", text);
    fflush(stdout);
    iop_server_handle_signals(srv); /* SIGINT/SIGTERM: graceful stop */
    int rc = iop_server_run(srv);
    iop_server_free(srv);
    return rc < 0;
}

/* upper_udp.c - an upper-casing UDP server: one datagram back per datagram.
 *   upper_udp [udp:ADDR]    (default udp:127.0.0.1:0) */
#include <ctype.h>
#include <stdio.h>

#include "ioplex/server.h"

static void on_datagram(iop_datagram *d, const char *buf, size_t n)
{
    char up[65536];
    for (size_t i = 0; i < n; i++)
        up[i] = (char)toupper((unsigned char)buf[i]);
    iop_datagram_reply(d, up, n);
}

int main(int argc, char **argv)
{
    static const struct iop_handler h = {.on_datagram = on_datagram};
    struct iop_server_config cfg = {.handler = &h};
    iop_server *srv;
    iop_addr addr;
    char text[IOP_ADDR_STRLEN];
    if (iop_server_new(&cfg, &srv) < 0 ||
        iop_server_listen(srv, argc > 1 ? argv[1] : "udp:127.0.0.1:0") < 0)
        return 2;
    iop_server_addr(srv, 0, &addr);
    iop_addr_format(&addr, text, sizeof text);
    printf("listening %s\n", text);
    fflush(stdout);
    iop_server_handle_signals(srv);
    int rc = iop_server_run(srv);
    iop_server_free(srv);
    return rc < 0;
}

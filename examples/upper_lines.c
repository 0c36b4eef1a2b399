/* upper_lines.c - a blocking-style handler (socketserver's handle()): it
 * answers each line upper-cased.  The same handler runs under every
 * blocking model:
 *   upper_lines [thread|iterative|fork] [ADDR]    (default thread, 127.0.0.1:0) */
#include <ctype.h>
#include <stdio.h>

#include "ioplex/server.h"

static void handle(iop_conn *c)
{
    char line[4096];
    ssize_t n;
    while ((n = iop_conn_readline(c, line, sizeof line)) > 0) {
        for (ssize_t i = 0; i < n; i++)
            line[i] = (char)toupper((unsigned char)line[i]);
        if (iop_conn_sendall(c, line, (size_t)n) < 0)
            return;
    }
}

int main(int argc, char **argv)
{
    static const struct iop_handler h = {.handle = handle};
    struct iop_server_config cfg = {.handler = &h};
    cfg.model = iop_model_parse(argc > 1 ? argv[1] : "thread");
    iop_server *srv;
    iop_addr addr;
    char text[IOP_ADDR_STRLEN];
    if (cfg.model < 0 || iop_server_new(&cfg, &srv) < 0 ||
        iop_server_listen(srv, argc > 2 ? argv[2] : "127.0.0.1:0") < 0)
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

/* reload.h - SIGHUP reloads the TLS context of a server command.
 *
 *     struct reload r;
 *     reload_start(&r, ctx);   (ctx NULL: nothing to do, SIGHUP untouched)
 *     ... serve ...
 *     reload_stop(&r);
 *
 * Under --processes only the process that got the signal reloads. */
#ifndef IOP_CLI_RELOAD_H
#define IOP_CLI_RELOAD_H

#include <pthread.h>

#include "ioplex/tls.h"

struct reload {
    iop_tls_ctx *ctx;
    int pipe[2];
    pthread_t thread;
    int running;
};

/* 0, or -errno (nothing installed). */
int reload_start(struct reload *r, iop_tls_ctx *ctx);
void reload_stop(struct reload *r);

#endif

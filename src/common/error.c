/* error.c - words for error codes, and the version. */
#include <string.h>

#include "ioplex/common.h"

#ifndef IOP_VERSION_STRING
#define IOP_VERSION_STRING "0.0.0"
#endif

const char *iop_strerror(int err)
{
    if (err < 0)
        err = -err;
    if (err == 0)
        return "Success";
    /* strerrordesc_np is thread-safe and never formats into a buffer, unlike
     * strerror; it returns NULL for numbers it does not know. */
    const char *s = strerrordesc_np(err);
    return s ? s : "Unknown error";
}

const char *iop_version(void)
{
    return IOP_VERSION_STRING;
}

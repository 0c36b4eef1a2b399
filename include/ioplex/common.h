/* ioplex/common.h - what every layer shares: error codes and the version.
 *
 * Every library call that can fail returns 0 (or a non-negative count) on
 * success and a negative errno value on failure, e.g. -EAGAIN.  Nothing in the
 * library prints, exits or aborts; turning a code into words is the caller's
 * choice, through iop_strerror().
 */
#ifndef IOPLEX_COMMON_H
#define IOPLEX_COMMON_H

#ifdef __cplusplus
extern "C" {
#endif

/* Words for an error code returned by any iop_ call.  Accepts the negative
 * code as returned (or a positive errno).  The string is static: never free
 * it.  Thread-safe. */
const char *iop_strerror(int err);

/* The library's version, "MAJOR.MINOR.PATCH". */
const char *iop_version(void);

#ifdef __cplusplus
}
#endif

#endif

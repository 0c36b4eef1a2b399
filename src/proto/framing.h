/* framing.h - incremental line and frame splitters (private to proto).
 *
 * Both take bytes as they arrive, in pieces of any size, and hand each
 * complete message to emit: straight from the input when it lies there
 * whole (no copy), from a buffer kept between calls when it was split.
 * They are fuzzed (tests/fuzz/fuzz_framing.c). */
#ifndef IOP_PROTO_FRAMING_H
#define IOP_PROTO_FRAMING_H

#include <stddef.h>
#include <stdint.h>

/* emit returns 0 to go on, non-zero to stop feeding (returned by feed). */
typedef int (*iop_emit_fn)(void *arg, const char *msg, size_t len);

struct iop_lines {
    char *buf; /* a partial line, NULL when none */
    size_t len, cap;
};

/* Feed n bytes; emit each line with its '\n'.  A line longer than max
 * bytes (not counting its '\n') is -EMSGSIZE: the state is then spent
 * (free it). */
int iop_lines_feed(struct iop_lines *st, const char *p, size_t n, size_t max, iop_emit_fn emit,
                   void *arg);
void iop_lines_free(struct iop_lines *st);

struct iop_frames {
    unsigned char hdr[4];
    unsigned hdrlen; /* header bytes seen so far */
    uint32_t need;   /* payload length of the frame being read */
    char *buf;       /* its payload so far, when split */
    size_t len;
};

/* Feed n bytes; emit each frame's payload.  A declared length over max is
 * -EMSGSIZE (*declared set to it when declared is not NULL). */
int iop_frames_feed(struct iop_frames *st, const char *p, size_t n, size_t max, iop_emit_fn emit,
                    void *arg, uint32_t *declared);
void iop_frames_free(struct iop_frames *st);

#endif

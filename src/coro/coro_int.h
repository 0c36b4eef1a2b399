/* coro_int.h - the coroutine layer's private parts: the context switch and
 * the stack pool. */
#ifndef IOP_CORO_INT_H
#define IOP_CORO_INT_H

#include <stddef.h>

#include "ioplex/coro.h"

/* The switch: assembly of our own where we have it, ucontext elsewhere.  A
 * compile-time choice; -DIOP_CORO_UCONTEXT forces the fallback (for testing
 * it on x86-64). */
#if !defined(IOP_CORO_UCONTEXT) && !defined(__x86_64__) && !defined(__aarch64__)
#define IOP_CORO_UCONTEXT 1
#endif

#ifdef IOP_CORO_UCONTEXT
#include <ucontext.h>
#endif

/* A context is a saved stack pointer: the switch pushes the callee-saved
 * registers onto the stack it leaves and pops them off the one it enters. */
struct iop__ctx {
#ifdef IOP_CORO_UCONTEXT
    ucontext_t uc;
#else
    void *sp;
#endif
};

#ifndef IOP_CORO_UCONTEXT
/* switch_<arch>.S: save the callee-saved registers on the current stack,
 * store the stack pointer in *from_sp, switch to to_sp and restore the
 * registers saved there; returns when someone switches back to *from_sp. */
void iop__coro_switch(void **from_sp, void *to_sp);
/* switch_<arch>.S: where a new context's first switch lands; it calls
 * entry(co), both taken from the callee-saved registers of the initial frame
 * (x86-64 r13, r12; aarch64 x20, x19). entry must never return. */
void iop__coro_start(void);
#endif

/* A mapping: [guard page][stack ... top).  The iop_coro struct sits at the
 * very top of the stack, so a coroutine is one mapping and no malloc. */
struct iop__stack {
    void *map;       /* the mapping, guard page included */
    size_t map_size; /* guard page + stack */
    void *lo;        /* lowest usable byte (just above the guard page) */
    size_t size;     /* usable bytes, lo .. lo + size */
};

/* Round a requested stack size to what will be mapped (pages, minimum,
 * default).  0 if absurd. */
size_t iop__stack_round(size_t stack_size);
/* A stack of `size` (already rounded) bytes from the pool or a new mapping:
 * 0 or -ENOMEM. */
int iop__stack_get(struct iop__stack *st, size_t size);
/* Back to the pool, or unmapped if the pool is full. */
void iop__stack_put(const struct iop__stack *st);

#endif

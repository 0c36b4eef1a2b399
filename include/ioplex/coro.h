/* ioplex/coro.h - stackful coroutines.
 *
 * A coroutine runs a function on a stack of its own.  iop_coro_resume() runs
 * it until it calls iop_coro_yield() or returns; the next resume continues
 * right after that yield.  This is the layer under `--model coro`: a handler
 * written like blocking code yields to the loop where it would block.  This
 * header is only the core (create, switch, free); it knows nothing of loops.
 *
 *   static void *count(iop_coro *co, void *arg)
 *   {
 *       for (long i = 0;; i++)
 *           iop_coro_yield((void *)i, NULL);    // resume returns 0, *out = i
 *   }
 *   iop_coro *co;
 *   iop_coro_new(count, NULL, 0, &co);          // 0: default stack, 64 KiB
 *   iop_coro_resume(co, NULL, &out);            // out == 0, then 1, 2...
 *   iop_coro_free(co);
 *
 * Switching: a switch saves and restores only the callee-saved registers and
 * the stack pointer (x86-64: rbx, rbp, r12-r15, rsp, the MXCSR and x87 control
 * words; aarch64: x19-x30, sp, d8-d15), in assembly of our own; no system call,
 * no signal mask (unlike swapcontext, which this uses only on other
 * architectures).  Values pass both ways: resume's `in` comes out of the
 * yield it continues, yield's `value` (or fn's return value) comes out of
 * resume.  A coroutine may resume another (nesting); a yield always returns to
 * whoever resumed the yielding coroutine.
 *
 * Stacks: mmap'd, with a PROT_NONE guard page below each, so a stack overflow
 * is a SIGSEGV, never silent corruption.  Pages are touched only as used: an
 * idle coroutine costs the pages its deepest call reached, not its stack size.
 * Freed stacks go to a pool shared by every thread (a mutex, taken on new and
 * free only, never on a switch) that keeps at most IOP_CORO_POOL_MAX of them
 * for reuse by a coroutine with the same stack size; a pooled stack keeps
 * the pages it had touched.  Beyond that they are unmapped.
 *
 * Threads: a coroutine belongs to the thread that created it: resume, yield,
 * status and free must be called on that thread.  (Moving a suspended
 * coroutine would break code that caches thread-local addresses such as
 * errno's across a yield.)  Coroutines on different threads are independent.
 *
 * Sanitizers: built with -fsanitize=address, every switch is announced to
 * ASan (its fiber API), so stacks are tracked correctly; with
 * -fsanitize=thread, every coroutine is a TSan fiber.
 *
 * Errors: 0 or a non-negative result, or a negative errno (ioplex/common.h).
 */
#ifndef IOPLEX_CORO_H
#define IOPLEX_CORO_H

#include <stddef.h>

#include "ioplex/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct iop_coro iop_coro;

/* The coroutine's body.  Its return value goes to the resume that ran it to
 * the end.  Returning ends the coroutine (IOP_CORO_DONE); it is not freed. */
typedef void *(*iop_coro_fn)(iop_coro *co, void *arg);

#define IOP_CORO_STACK_DEFAULT (64u * 1024) /* stack_size 0 means this */
#define IOP_CORO_STACK_MIN     (16u * 1024) /* smaller requests get this */
#define IOP_CORO_POOL_MAX      64           /* freed stacks kept for reuse */

enum iop_coro_status {
    IOP_CORO_SUSPENDED = 0, /* not started yet, or stopped in iop_coro_yield() */
    IOP_CORO_RUNNING,       /* running, or resumed another that has not yielded */
    IOP_CORO_DONE,          /* fn has returned */
};

/* Create a suspended coroutine that will run fn(co, arg) on its first resume.
 * stack_size is rounded up to whole pages (0: IOP_CORO_STACK_DEFAULT; below
 * IOP_CORO_STACK_MIN: that); the guard page comes on top of it.  Nothing runs
 * before the first resume.  Errors: -ENOMEM (no memory or mappings),
 * -EINVAL (fn NULL, size absurd).  On success *out is set and 0 returned. */
int iop_coro_new(iop_coro_fn fn, void *arg, size_t stack_size, iop_coro **out);

/* Run co until it yields (returns 0, *out = the yielded value) or fn returns
 * (returns 1, *out = fn's return value).  `in` is what the yield co is
 * stopped in hands back (ignored on the first resume: fn has `arg`).  out
 * may be NULL.  Errors: -EBUSY (co is running, i.e. resuming itself or one
 * of the coroutines that resumed it), -EINVAL (co is done). */
int iop_coro_resume(iop_coro *co, void *in, void **out);

/* Called from inside a coroutine: stop the current (innermost) coroutine and
 * return to its resumer, whose iop_coro_resume() returns 0 with `value`.
 * Returns 0 when resumed again, with *in (if in is not NULL) set to the
 * resume's `in`.  Errors: -EPERM (not inside a coroutine; nothing happens). */
int iop_coro_yield(void *value, void **in);

/* The coroutine running on this thread (the innermost), or NULL. */
iop_coro *iop_coro_current(void);

/* One of enum iop_coro_status. */
int iop_coro_status(const iop_coro *co);

/* The arg given to iop_coro_new(). */
void *iop_coro_arg(const iop_coro *co);

/* Free a coroutine that is suspended or done, and give its stack to the pool.
 * A suspended coroutine is dropped where it stands: nothing on its stack is
 * unwound or cleaned up, so release its resources first.  Returns -EBUSY (and
 * frees nothing) if co is running.  NULL is accepted. */
int iop_coro_free(iop_coro *co);

/* Stack accounting for the whole process: stacks owned by live coroutines
 * and stacks waiting in the pool.  Either pointer may be NULL.  Thread-safe. */
void iop_coro_stats(size_t *live, size_t *pooled);

/* Unmap every pooled stack (e.g. after a burst of coroutines).  Thread-safe. */
void iop_coro_pool_trim(void);

#ifdef __cplusplus
}
#endif

#endif

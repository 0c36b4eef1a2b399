/* coro.c - stackful coroutines: create, resume, yield, free.
 *
 * The switch itself is switch_<arch>.S (or ucontext where we have no
 * assembly); this file keeps the bookkeeping around it: who resumed whom,
 * the value passed across, and the sanitizers' view of which stack is live.
 *
 * ASan fiber protocol (sanitizer/common_interface_defs.h): before a switch,
 * __sanitizer_start_switch_fiber(save, bottom, size) names the stack being
 * entered (save NULL when the stack being left is dead for good); right
 * after, on the new stack, __sanitizer_finish_switch_fiber() completes it
 * and reports the stack that was left, which is how a coroutine learns its
 * resumer's stack bounds.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "coro/coro_int.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define IOP_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define IOP_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(IOP_ASAN)
#define IOP_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__) && !defined(IOP_TSAN)
#define IOP_TSAN 1
#endif
#ifdef IOP_ASAN
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef IOP_TSAN
#include <sanitizer/tsan_interface.h>
#endif

struct iop_coro {
    struct iop__ctx ctx;    /* the coroutine's, while it is not running */
    struct iop__ctx caller; /* its resumer's, while it runs */
    iop_coro_fn fn;
    void *arg;
    void *value;  /* in on resume, out on yield and return */
    iop_coro *up; /* the coroutine current when this one was resumed */
    int state;    /* enum iop_coro_status */
    struct iop__stack stack;
#ifdef IOP_ASAN
    void *fake_stack;        /* ASan's fake stack of this coroutine, suspended */
    void *caller_fake_stack; /* ... of the resumer, while this one runs */
    const void *caller_bottom;
    size_t caller_size;
#endif
#ifdef IOP_TSAN
    void *fiber;
    void *caller_fiber;
#endif
};

static _Thread_local iop_coro *current;

/* ---- sanitizer hooks (empty in ordinary builds) ------------------------ */

/* Always inlined, like ctx_switch(): TSan pushes a frame on the current
 * fiber's shadow stack at every instrumented function entry and pops one at
 * exit, so the fiber switch and the stack switch must happen inside the same
 * function (resume, yield), or a helper would enter on one fiber and exit on
 * the other, unbalancing both shadow stacks. */
#define IOP_INLINE static inline __attribute__((always_inline))

/* Resumer, about to enter co. */
IOP_INLINE void san_enter(iop_coro *co)
{
#ifdef IOP_ASAN
    __sanitizer_start_switch_fiber(&co->caller_fake_stack, co->stack.lo, co->stack.size);
#endif
#ifdef IOP_TSAN
    co->caller_fiber = __tsan_get_current_fiber();
    __tsan_switch_to_fiber(co->fiber, 0);
#endif
    (void)co;
}

/* Resumer, back from co. */
IOP_INLINE void san_entered_back(iop_coro *co)
{
#ifdef IOP_ASAN
    __sanitizer_finish_switch_fiber(co->caller_fake_stack, NULL, NULL);
#endif
    (void)co;
}

/* co, about to leave for its resumer; dying: it will never run again. */
IOP_INLINE void san_leave(iop_coro *co, int dying)
{
#ifdef IOP_ASAN
    __sanitizer_start_switch_fiber(dying ? NULL : &co->fake_stack, co->caller_bottom,
                                   co->caller_size);
#endif
#ifdef IOP_TSAN
    __tsan_switch_to_fiber(co->caller_fiber, 0);
#endif
    (void)co;
    (void)dying;
}

/* co, running again (first is its first run: no fake stack yet). */
IOP_INLINE void san_left_back(iop_coro *co, int first)
{
#ifdef IOP_ASAN
    __sanitizer_finish_switch_fiber(first ? NULL : co->fake_stack, &co->caller_bottom,
                                    &co->caller_size);
#endif
    (void)co;
    (void)first;
}

/* ---- the switch ---------------------------------------------------------- */

IOP_INLINE void ctx_switch(struct iop__ctx *from, struct iop__ctx *to)
{
#ifdef IOP_CORO_UCONTEXT
    swapcontext(&from->uc, &to->uc);
#else
    iop__coro_switch(&from->sp, to->sp);
#endif
}

/* First code on the coroutine's stack.  Never returns: the last switch out
 * leaves the stack for good. */
static void coro_main(iop_coro *co)
{
    san_left_back(co, 1);
    co->value = co->fn(co, co->arg);
    co->state = IOP_CORO_DONE;
    current = co->up;
    san_leave(co, 1);
    ctx_switch(&co->ctx, &co->caller);
    __builtin_unreachable();
}

#ifdef IOP_CORO_UCONTEXT
/* makecontext passes ints only: the pointer goes in two halves. */
static void coro_main_uc(unsigned hi, unsigned lo)
{
    coro_main((iop_coro *)(((uintptr_t)hi << 16 << 16) | (uintptr_t)lo));
}

static int ctx_init(iop_coro *co, void *top)
{
    if (getcontext(&co->ctx.uc) < 0)
        return -errno;
    co->ctx.uc.uc_stack.ss_sp = co->stack.lo;
    co->ctx.uc.uc_stack.ss_size = (size_t)((char *)top - (char *)co->stack.lo);
    co->ctx.uc.uc_link = NULL;
    uintptr_t p = (uintptr_t)co;
    makecontext(&co->ctx.uc, (void (*)(void))coro_main_uc, 2, (unsigned)(p >> 16 >> 16),
                (unsigned)(p & 0xffffffffu));
    return 0;
}
#else
/* An initial frame that iop__coro_switch() pops as if it had pushed it:
 * callee-saved registers, with the entry point in the return slot. */
static int ctx_init(iop_coro *co, void *top)
{
    uintptr_t t = (uintptr_t)top & ~(uintptr_t)15;
#if defined(__x86_64__)
    /* Frame, from sp up: MXCSR (4 bytes), x87 control word (2), padding (2),
     * r15, r14, r13, r12, rbx, rbp, return address.  The return slot must be
     * 16-aligned so that iop__coro_start sees the stack as a function
     * entered by call would. */
    uint64_t *ret = (uint64_t *)(t - 16);
    uint64_t *sp = ret - 7;
    uint32_t mxcsr;
    uint16_t fpucw;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fpucw));
    memset(sp, 0, 8 * sizeof *sp);
    memcpy(sp, &mxcsr, sizeof mxcsr);
    memcpy((char *)sp + 4, &fpucw, sizeof fpucw);
    sp[3] = (uint64_t)(uintptr_t)coro_main; /* r13: entry */
    sp[4] = (uint64_t)(uintptr_t)co;        /* r12: its argument */
    *ret = (uint64_t)(uintptr_t)iop__coro_start;
#elif defined(__aarch64__)
    /* Frame, from sp up: x19..x30 (x29 frame pointer, x30 return address),
     * then d8..d15; 160 bytes, sp stays 16-aligned. */
    uint64_t *sp = (uint64_t *)(t - 160);
    memset(sp, 0, 160);
    sp[0] = (uint64_t)(uintptr_t)co;               /* x19: argument */
    sp[1] = (uint64_t)(uintptr_t)coro_main;        /* x20: entry */
    sp[11] = (uint64_t)(uintptr_t)iop__coro_start; /* x30 */
#endif
    co->ctx.sp = sp;
    return 0;
}
#endif

/* ---- the API --------------------------------------------------------------- */

int iop_coro_new(iop_coro_fn fn, void *arg, size_t stack_size, iop_coro **out)
{
    size_t size = iop__stack_round(stack_size);
    if (!out || !fn || !size)
        return -EINVAL;
    struct iop__stack st;
    int rc = iop__stack_get(&st, size);
    if (rc < 0)
        return rc;

    /* The struct at the top of the stack, the stack proper below it. */
    uintptr_t top = (uintptr_t)st.lo + st.size - sizeof(iop_coro);
    top &= ~(uintptr_t)63;
    iop_coro *co = (iop_coro *)top;
    memset(co, 0, sizeof *co);
    co->fn = fn;
    co->arg = arg;
    co->state = IOP_CORO_SUSPENDED;
    co->stack = st;
#ifdef IOP_ASAN
    /* The struct is not stack: keep it out of what ASan thinks the stack is. */
    co->stack.size = (size_t)(top - (uintptr_t)st.lo);
#endif
    rc = ctx_init(co, co);
    if (rc < 0) {
        co->stack = st;
        iop__stack_put(&st);
        return rc;
    }
#ifdef IOP_TSAN
    co->fiber = __tsan_create_fiber(0);
#endif
    *out = co;
    return 0;
}

int iop_coro_resume(iop_coro *co, void *in, void **out)
{
    if (co->state == IOP_CORO_RUNNING)
        return -EBUSY;
    if (co->state == IOP_CORO_DONE)
        return -EINVAL;
    co->value = in;
    co->state = IOP_CORO_RUNNING;
    co->up = current;
    current = co;
    san_enter(co);
    ctx_switch(&co->caller, &co->ctx);
    san_entered_back(co);
    if (out)
        *out = co->value;
    return co->state == IOP_CORO_DONE ? 1 : 0;
}

int iop_coro_yield(void *value, void **in)
{
    iop_coro *co = current;
    if (!co)
        return -EPERM;
    co->value = value;
    co->state = IOP_CORO_SUSPENDED;
    current = co->up;
    san_leave(co, 0);
    ctx_switch(&co->ctx, &co->caller);
    san_left_back(co, 0);
    if (in)
        *in = co->value;
    return 0;
}

iop_coro *iop_coro_current(void)
{
    return current;
}

int iop_coro_status(const iop_coro *co)
{
    return co->state;
}

void *iop_coro_arg(const iop_coro *co)
{
    return co->arg;
}

int iop_coro_free(iop_coro *co)
{
    if (!co)
        return 0;
    if (co->state == IOP_CORO_RUNNING)
        return -EBUSY;
#ifdef IOP_TSAN
    __tsan_destroy_fiber(co->fiber);
#endif
    /* Copy first: the struct lives on the stack being given back. */
    struct iop__stack st = co->stack;
    size_t page = (size_t)((char *)st.lo - (char *)st.map);
    st.size = st.map_size - page;
    iop__stack_put(&st);
    return 0;
}

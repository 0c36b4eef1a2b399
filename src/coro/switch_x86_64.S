/* switch_x86_64.S - the coroutine context switch for x86-64 (System V).
 *
 * Only what the ABI says a callee must preserve is saved: rbx, rbp, r12-r15,
 * the stack pointer, and the control bits of MXCSR and the x87 FPU (rounding
 * mode, exception masks).  Everything else is caller-saved, so the C compiler
 * has already spilled whatever it needs before calling us.  No system call,
 * no signal mask: that is the whole difference from swapcontext.
 */
#if defined(__x86_64__) && !defined(IOP_CORO_UCONTEXT)

#if defined(__CET__) && (__CET__ & 1)
#define IOP_ENDBR endbr64
#else
#define IOP_ENDBR
#endif

    .text

/* void iop__coro_switch(void **from_sp, void *to_sp)  (rdi, rsi)
 *
 * Frame pushed (and popped), from the final rsp up: MXCSR (4 bytes), x87
 * control word (2), 2 bytes padding, r15, r14, r13, r12, rbx, rbp, and the
 * return address the call left.  coro.c builds the same frame for a new
 * coroutine. */
    .globl  iop__coro_switch
    .hidden iop__coro_switch
    .type   iop__coro_switch, @function
    .p2align 4
iop__coro_switch:
    .cfi_startproc
    IOP_ENDBR
    pushq   %rbp
    pushq   %rbx
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    subq    $8, %rsp
    stmxcsr (%rsp)
    fnstcw  4(%rsp)

    movq    %rsp, (%rdi)
    movq    %rsi, %rsp

    ldmxcsr (%rsp)
    fldcw   4(%rsp)
    addq    $8, %rsp
    popq    %r15
    popq    %r14
    popq    %r13
    popq    %r12
    popq    %rbx
    popq    %rbp
    ret
    .cfi_endproc
    .size   iop__coro_switch, .-iop__coro_switch

/* Where a new coroutine's first switch returns to: r13(r12), i.e.
 * coro_main(co), which never returns.  On entry rsp is 8 mod 16 (as after a
 * call); the pushed 0 realigns it and ends the frame chain for debuggers. */
    .globl  iop__coro_start
    .hidden iop__coro_start
    .type   iop__coro_start, @function
    .p2align 4
iop__coro_start:
    .cfi_startproc
    .cfi_undefined rip
    IOP_ENDBR
    xorl    %ebp, %ebp
    pushq   $0
    movq    %r12, %rdi
    call    *%r13
    ud2
    .cfi_endproc
    .size   iop__coro_start, .-iop__coro_start

#endif

#if defined(__linux__) && defined(__ELF__)
    .section .note.GNU-stack, "", %progbits
#endif

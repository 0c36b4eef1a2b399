/* switch_aarch64.S - the coroutine context switch for aarch64 (AAPCS64).
 *
 * Only what the ABI says a callee must preserve is saved: x19-x28, the frame
 * pointer x29, the link register x30, sp, and the low 64 bits of v8-v15
 * (d8-d15).  No system call, no signal mask: that is the whole difference
 * from swapcontext.
 */
#if defined(__aarch64__) && !defined(IOP_CORO_UCONTEXT)

    .text

/* void iop__coro_switch(void **from_sp, void *to_sp)  (x0, x1)
 *
 * Frame (160 bytes, from the final sp up): x19..x30, then d8..d15.  coro.c
 * builds the same frame for a new coroutine, with x30 = iop__coro_start. */
    .globl  iop__coro_switch
    .hidden iop__coro_switch
    .type   iop__coro_switch, %function
    .p2align 4
iop__coro_switch:
    .cfi_startproc
    sub     sp, sp, #160
    stp     x19, x20, [sp, #0]
    stp     x21, x22, [sp, #16]
    stp     x23, x24, [sp, #32]
    stp     x25, x26, [sp, #48]
    stp     x27, x28, [sp, #64]
    stp     x29, x30, [sp, #80]
    stp     d8, d9, [sp, #96]
    stp     d10, d11, [sp, #112]
    stp     d12, d13, [sp, #128]
    stp     d14, d15, [sp, #144]

    mov     x9, sp
    str     x9, [x0]
    mov     sp, x1

    ldp     x19, x20, [sp, #0]
    ldp     x21, x22, [sp, #16]
    ldp     x23, x24, [sp, #32]
    ldp     x25, x26, [sp, #48]
    ldp     x27, x28, [sp, #64]
    ldp     x29, x30, [sp, #80]
    ldp     d8, d9, [sp, #96]
    ldp     d10, d11, [sp, #112]
    ldp     d12, d13, [sp, #128]
    ldp     d14, d15, [sp, #144]
    add     sp, sp, #160
    ret
    .cfi_endproc
    .size   iop__coro_switch, .-iop__coro_switch

/* Where a new coroutine's first switch returns to: x20(x19), i.e.
 * coro_main(co), which never returns. x29 = 0 ends the frame chain. */
    .globl  iop__coro_start
    .hidden iop__coro_start
    .type   iop__coro_start, %function
    .p2align 4
iop__coro_start:
    .cfi_startproc
    .cfi_undefined x30
    mov     x29, #0
    mov     x0, x19
    blr     x20
    brk     #0x3e8
    .cfi_endproc
    .size   iop__coro_start, .-iop__coro_start

#endif

#if defined(__linux__) && defined(__ELF__)
    .section .note.GNU-stack, "", %progbits
#endif

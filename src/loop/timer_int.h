/* timer_int.h - the timer heap, as the loop core sees it (private). */
#ifndef IOP_TIMER_INT_H
#define IOP_TIMER_INT_H

#include "loop/loop_int.h"

/* Earliest due time, if any timer is active: 1 and *due set, else 0. */
int iop__timer_next(const iop_loop *loop, uint64_t *due);

/* Run every timer due at or before loop->now. */
void iop__timer_run(iop_loop *loop);

#endif

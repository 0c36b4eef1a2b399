/* timer.c - timers on a binary min-heap ordered by (due, start sequence).
 *
 * The sequence number makes timers due in the same millisecond fire in the
 * order they were started, which a plain heap does not promise. */
#include <errno.h>
#include <stdlib.h>

#include "loop/timer_int.h"

#define TIMER_OFF SIZE_MAX

static int before(const iop_timer *a, const iop_timer *b)
{
    return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void heap_set(iop_loop *l, size_t i, iop_timer *t)
{
    l->heap[i] = t;
    t->slot = i;
}

static void sift_up(iop_loop *l, size_t i)
{
    iop_timer *t = l->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(t, l->heap[parent]))
            break;
        heap_set(l, i, l->heap[parent]);
        i = parent;
    }
    heap_set(l, i, t);
}

static void sift_down(iop_loop *l, size_t i)
{
    iop_timer *t = l->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= l->nheap)
            break;
        if (c + 1 < l->nheap && before(l->heap[c + 1], l->heap[c]))
            c++;
        if (!before(l->heap[c], t))
            break;
        heap_set(l, i, l->heap[c]);
        i = c;
    }
    heap_set(l, i, t);
}

static int heap_push(iop_loop *l, iop_timer *t)
{
    if (l->nheap == l->heapcap) {
        size_t cap = l->heapcap ? l->heapcap * 2 : 16;
        iop_timer **h = realloc(l->heap, cap * sizeof *h);
        if (!h)
            return -ENOMEM;
        l->heap = h;
        l->heapcap = cap;
    }
    heap_set(l, l->nheap++, t);
    sift_up(l, l->nheap - 1);
    return 0;
}

static void heap_remove(iop_loop *l, iop_timer *t)
{
    size_t i = t->slot;
    iop_timer *last = l->heap[--l->nheap];
    t->slot = TIMER_OFF;
    if (i == l->nheap)
        return;
    heap_set(l, i, last);
    /* The moved timer may belong above or below its new place. */
    if (i > 0 && before(last, l->heap[(i - 1) / 2]))
        sift_up(l, i);
    else
        sift_down(l, i);
}

void iop_timer_init(iop_timer *t, iop_timer_cb cb)
{
    t->data = NULL;
    t->loop = NULL;
    t->cb = cb;
    t->due = t->repeat = t->seq = 0;
    t->slot = TIMER_OFF;
}

int iop_timer_active(const iop_timer *t)
{
    return t->slot != TIMER_OFF;
}

int iop_timer_start(iop_loop *l, iop_timer *t, uint64_t timeout_ms, uint64_t repeat_ms)
{
    if (!t->cb)
        return -EINVAL;
    if (t->slot != TIMER_OFF)
        iop_timer_stop(t);
    t->loop = l;
    t->due = timeout_ms > UINT64_MAX - l->now ? UINT64_MAX : l->now + timeout_ms;
    t->repeat = repeat_ms;
    t->seq = l->timer_seq++;
    int rc = heap_push(l, t);
    if (rc < 0)
        return rc;
    l->nactive++;
    return 0;
}

void iop_timer_stop(iop_timer *t)
{
    if (t->slot == TIMER_OFF)
        return;
    heap_remove(t->loop, t);
    t->loop->nactive--;
}

int iop__timer_next(const iop_loop *l, uint64_t *due)
{
    if (l->nheap == 0)
        return 0;
    *due = l->heap[0]->due;
    return 1;
}

void iop__timer_run(iop_loop *l)
{
    /* Timers started by these callbacks with timeout 0 get a later sequence
     * but the same due time: bound the phase by the sequence seen at entry
     * so that they wait for the next iteration instead of spinning here. */
    uint64_t seq_limit = l->timer_seq;
    while (l->nheap > 0) {
        iop_timer *t = l->heap[0];
        if (t->due > l->now || t->seq >= seq_limit)
            break;
        iop_timer_stop(t);
        if (t->repeat) {
            /* Next due counts from now, so a late run does not fire a burst. */
            (void)iop_timer_start(l, t, t->repeat, t->repeat);
        }
        t->cb(t);
    }
}

/* stack.c - coroutine stacks: mmap'd, a guard page below, pooled for reuse.
 *
 * Each stack is one private anonymous mapping with MAP_NORESERVE: the kernel
 * hands out a page only when the coroutine first touches it, so a 64 KiB
 * stack of an idle coroutine costs the one or two pages its frames reached.
 * The lowest page is PROT_NONE: running off the end faults (SIGSEGV) instead
 * of writing over whatever lies below.
 *
 * The pool is one list for the whole process under a mutex, taken only when a
 * coroutine is created or freed (never on a switch).  It keeps at most
 * IOP_CORO_POOL_MAX stacks, any sizes; a request takes the first of its size.
 * A pooled stack keeps its resident pages (that is what makes reuse cheap);
 * the bound keeps that at IOP_CORO_POOL_MAX stacks' worth at most.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "coro/coro_int.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define IOP_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(IOP_ASAN)
#define IOP_ASAN 1
#endif
#ifdef IOP_ASAN
#include <sanitizer/asan_interface.h>
#endif

/* A pooled stack, written at the top of its own memory. */
struct pooled {
    struct pooled *next;
    struct iop__stack st;
};

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pooled *pool_head;
static size_t pool_count;
static size_t live_count;

static size_t page_size(void)
{
    long p = sysconf(_SC_PAGESIZE); /* glibc: a load, no system call */
    return p > 0 ? (size_t)p : 4096;
}

size_t iop__stack_round(size_t stack_size)
{
    size_t page = page_size();
    if (stack_size == 0)
        stack_size = IOP_CORO_STACK_DEFAULT;
    if (stack_size < IOP_CORO_STACK_MIN)
        stack_size = IOP_CORO_STACK_MIN;
    if (stack_size > SIZE_MAX / 4)
        return 0;
    return (stack_size + page - 1) & ~(page - 1);
}

/* Stale ASan shadow (redzones of frames that were never popped, when a
 * suspended coroutine is freed) must not outlive the coroutine, or the next
 * user of the memory sees false reports. */
static void unpoison(const struct iop__stack *st)
{
#ifdef IOP_ASAN
    __asan_unpoison_memory_region(st->lo, st->size);
#else
    (void)st;
#endif
}

static int stack_map(struct iop__stack *st, size_t size)
{
    size_t page = page_size();
    size_t map_size = size + page;
    void *map = mmap(NULL, map_size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (map == MAP_FAILED)
        return -ENOMEM;
    if (mprotect(map, page, PROT_NONE) < 0) {
        munmap(map, map_size);
        return -ENOMEM;
    }
    st->map = map;
    st->map_size = map_size;
    st->lo = (char *)map + page;
    st->size = size;
    return 0;
}

static void stack_unmap(const struct iop__stack *st)
{
    unpoison(st);
    munmap(st->map, st->map_size);
}

int iop__stack_get(struct iop__stack *st, size_t size)
{
    pthread_mutex_lock(&pool_lock);
    for (struct pooled **pp = &pool_head; *pp; pp = &(*pp)->next) {
        if ((*pp)->st.size == size) {
            struct pooled *p = *pp;
            *pp = p->next;
            *st = p->st;
            pool_count--;
            live_count++;
            pthread_mutex_unlock(&pool_lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&pool_lock);

    int rc = stack_map(st, size);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&pool_lock);
    live_count++;
    pthread_mutex_unlock(&pool_lock);
    return 0;
}

void iop__stack_put(const struct iop__stack *st)
{
    unpoison(st);
    pthread_mutex_lock(&pool_lock);
    live_count--;
    if (pool_count < IOP_CORO_POOL_MAX) {
        struct pooled *p = (struct pooled *)((char *)st->lo + st->size) - 1;
        p->st = *st;
        p->next = pool_head;
        pool_head = p;
        pool_count++;
        pthread_mutex_unlock(&pool_lock);
        return;
    }
    pthread_mutex_unlock(&pool_lock);
    stack_unmap(st);
}

void iop_coro_stats(size_t *live, size_t *pooled)
{
    pthread_mutex_lock(&pool_lock);
    if (live)
        *live = live_count;
    if (pooled)
        *pooled = pool_count;
    pthread_mutex_unlock(&pool_lock);
}

void iop_coro_pool_trim(void)
{
    pthread_mutex_lock(&pool_lock);
    struct pooled *p = pool_head;
    pool_head = NULL;
    pool_count = 0;
    pthread_mutex_unlock(&pool_lock);
    while (p) {
        struct pooled *next = p->next;
        struct iop__stack st = p->st; /* p lives in the memory being unmapped */
        stack_unmap(&st);
        p = next;
    }
}

/* http_cache.c - workers and their open-file cache.
 *
 * A reactor thread's worker has a cache of its own, checked once per loop
 * iteration; the blocking models share one cache per process (a lock per
 * stripe of slots), whose entries are never changed once published. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "proto/http_srv.h"

#define CACHE_VALID_S 1 /* a cached path is reopened after this long */

/* ---- workers --------------------------------------------------------------- */

static _Thread_local struct http_worker *tl_worker;

struct http_worker *http_worker_get(iop_http *http, iop_loop *loop)
{
    struct http_worker *w = tl_worker;
    if (w && w->http == http && w->loop == loop)
        return w;
    pthread_mutex_lock(&http->lock);
    for (w = http->workers; w; w = w->next)
        if (w->loop == loop && loop)
            break;
    if (!w && (w = calloc(1, sizeof *w))) {
        w->http = http;
        w->loop = loop;
        w->cache = 1;
        w->flush.data = w;
        w->tick.data = w;
        w->next = http->workers;
        http->workers = w;
    }
    pthread_mutex_unlock(&http->lock);
    if (w)
        tl_worker = w;
    return w;
}

void http_worker_local(struct http_worker *w, iop_http *http)
{
    memset(w, 0, sizeof *w);
    w->http = http;
}

static void entry_ref(struct fentry *e)
{
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
}

static void entry_unref(struct fentry *e)
{
    if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (e->map)
        munmap((void *)(uintptr_t)e->map, (size_t)e->st.st_size);
    http_siblings_drop(e);
    close(e->fd);
    free(e->path);
    free(e);
}

void http_worker_fini(struct http_worker *w)
{
    http_log_flush(w);
    free(w->log);
    w->log = NULL;
    free(w->peers);
    w->peers = NULL;
    w->npeers = 0;
    for (size_t i = 0; i < HTTP_FC_SLOTS; i++) {
        if (w->slots[i])
            entry_unref(w->slots[i]);
        w->slots[i] = NULL;
    }
    if (w->loop)
        http_event_worker_fini(w);
    if (tl_worker == w)
        tl_worker = NULL;
}

/* ---- the open-file cache --------------------------------------------------- */

static uint32_t hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static void entry_fill(struct fentry *e)
{
    e->etag_len = http_etag(&e->st, e->etag);
    http_date(e->st.st_mtime, e->lastmod);
}

static int same_file(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_size == b->st_size && a->st_mode == b->st_mode &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

static void tick_cb(iop_defer *d)
{
    struct http_worker *w = d->data;
    w->epoch++;
}

/* A fresh entry for rel: opened beneath the root.  -errno. */
static int entry_open(struct http_worker *w, const char *rel, struct fentry **out)
{
    /* O_NONBLOCK: opening a fifo for reading would wait for a writer. */
    int fd = http_open_beneath(w->http->rootfd, rel, O_RDONLY | O_NONBLOCK);
    if (fd < 0)
        return fd;
    struct fentry *e = calloc(1, sizeof *e);
    if (!e || !(e->path = strdup(rel)) || fstat(fd, &e->st) < 0) {
        int err = e && e->path ? -errno : -ENOMEM;
        if (e)
            free(e->path);
        free(e);
        close(fd);
        return err;
    }
    e->fd = fd;
    e->opened = time(NULL);
    e->epoch = w->epoch;
    if (w->loop)
        (void)iop_defer_start(w->loop, &w->tick, tick_cb);
    const char *slash = strrchr(rel, '/');
    const char *name = slash ? slash + 1 : rel;
    e->mime = http_mime_lookup(name, strlen(name));
    if (!e->mime)
        e->mime = w->http->cfg.default_type;
    entry_fill(e);
    if (S_ISREG(e->st.st_mode))
        http_siblings_open(w, e);
    *out = e;
    return 0;
}

/* Is e still the file it was?  fstat once per loop iteration (always
 * without a loop): a file rewritten in place gets new validators. */
static int entry_check(struct http_worker *w, struct fentry *e)
{
    if (w->loop && e->epoch == w->epoch)
        return 1;
    struct stat st;
    if (fstat(e->fd, &st) < 0 || st.st_nlink == 0)
        return 0;
    if (!same_file(&st, &e->st)) {
        /* A mapping's size is the file's; other threads read a shared
         * entry: a new entry, not this one changed. */
        if (e->map || w->shared)
            return 0;
        e->st = st;
        entry_fill(e);
    }
    if (w->loop) {
        e->epoch = w->epoch;
        (void)iop_defer_start(w->loop, &w->tick, tick_cb);
    }
    return 1;
}

static int fresh(const struct fentry *e, const char *rel)
{
    return e && !strcmp(e->path, rel) && time(NULL) - e->opened < CACHE_VALID_S;
}

/* A fresh entry for rel, held, and kept in *slot (under lock, if any) when
 * it is a regular file. */
static int entry_reopen(struct http_worker *w, const char *rel, struct fentry **slot,
                        pthread_mutex_t *lock, struct fentry **out)
{
    struct fentry *e = NULL, *old = NULL;
    int rc = entry_open(w, rel, &e);
    if (rc < 0)
        return rc;
    atomic_init(&e->refs, 1);
    if (slot && S_ISREG(e->st.st_mode)) {
        entry_ref(e);
        if (lock)
            pthread_mutex_lock(lock);
        old = *slot;
        *slot = e;
        if (lock)
            pthread_mutex_unlock(lock);
    }
    if (old)
        entry_unref(old);
    *out = e;
    return 0;
}

/* The blocking models' shared cache: the slot's lock is held only to take a
 * reference or to replace the entry. */
static int shared_get(struct http_worker *w, const char *rel, struct fentry **out)
{
    uint32_t i = hash(rel) % HTTP_FC_SLOTS;
    struct fentry **slot = &w->shared->slots[i];
    pthread_mutex_t *lock = &w->shared->locks[i % HTTP_FC_STRIPES];
    pthread_mutex_lock(lock);
    struct fentry *e = fresh(*slot, rel) ? *slot : NULL;
    if (e)
        entry_ref(e);
    pthread_mutex_unlock(lock);
    if (e && entry_check(w, e)) {
        *out = e;
        return 0;
    }
    if (e)
        entry_unref(e);
    return entry_reopen(w, rel, slot, lock, out);
}

/* The entry for rel, held (release with entry_release).  Cached entries
 * are checked with fstat on every use: a file written in place is seen at
 * once; a name that now points elsewhere (rename, delete) within
 * CACHE_VALID_S. */
int http_entry_get(struct http_worker *w, const char *rel, struct fentry **out)
{
    if (w->cache && w->shared)
        return shared_get(w, rel, out);
    struct fentry **slot = w->cache ? &w->slots[hash(rel) % HTTP_FC_SLOTS] : NULL;
    if (slot && fresh(*slot, rel) && entry_check(w, *slot)) {
        entry_ref(*slot);
        *out = *slot;
        return 0;
    }
    return entry_reopen(w, rel, slot, NULL, out);
}

static void entry_release(struct fentry *e)
{
    entry_unref(e);
}

void http_entry_hold(struct fentry *e)
{
    entry_ref(e);
}

void http_entry_release(void *e)
{
    entry_release(e);
}

const char *http_entry_map(struct fentry *e)
{
    if (e->map_tried)
        return e->map;
    e->map_tried = 1;
    size_t n = (size_t)e->st.st_size;
    if (!S_ISREG(e->st.st_mode) || n == 0 || n > HTTP_MAP_MAX)
        return NULL;
    void *p = mmap(NULL, n, PROT_READ, MAP_SHARED, e->fd, 0);
    e->map = p == MAP_FAILED ? NULL : p;
    return e->map;
}

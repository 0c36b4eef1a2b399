/* http_compress.c - `--compress`: gzip, zstd and brotli copies of
 * compressible files, made once per version of a file (lwan's approach:
 * the cost is per change, not per request) and sent from memory.
 *
 * One table per server, shared by every worker (a mutex guards the table
 * and its LRU list; a copy's bytes never change, and a reference count
 * keeps them alive while a response sends them).  A copy is found by (path,
 * coding) and valid for the identity ETag it was made from: a file that
 * changed has a new ETag, and its old copy is dropped at the first lookup
 * that sees it.  Compression runs outside the lock, on the thread of the
 * request that first needs it; two racing threads may both compress, the
 * second result is dropped.  A copy is kept only when it saves at least a
 * tenth; otherwise an empty copy remembers not to try again for that
 * version.  The bytes kept are bounded by a budget: inserting evicts the
 * least recently used copies, and a copy larger than the whole budget is
 * sent once and replaced by an empty one (identity from then on).  Copies
 * evicted while responses send them live until those release them. */
#include <brotli/encode.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "proto/http_srv.h"

#define ZBUCKETS    1024
#define GZIP_LEVEL  6
#define ZSTD_LEVEL  9
#define BROTLI_QUAL 7 /* 11 costs seconds on a MiB; 7 is most of its gain */

struct http_zcache {
    pthread_mutex_t lock;
    struct http_zcopy *buckets[ZBUCKETS];
    struct http_zcopy *mru, *lru; /* most and least recently used */
    size_t bytes, budget;
};

int http_zcache_new(iop_http *h)
{
    if (!h->cfg.compress)
        return 0;
    struct http_zcache *z = calloc(1, sizeof *z);
    if (!z)
        return -ENOMEM;
    pthread_mutex_init(&z->lock, NULL);
    z->budget = h->cfg.compress_memory;
    h->zcache = z;
    return 0;
}

static void zcopy_free(struct http_zcopy *c)
{
    free(c->data);
    free(c->path);
    free(c);
}

void http_zcopy_hold(struct http_zcopy *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void http_zcopy_release(void *p)
{
    struct http_zcopy *c = p;
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        zcopy_free(c);
}

void http_zcache_free(iop_http *h)
{
    struct http_zcache *z = h->zcache;
    if (!z)
        return;
    for (struct http_zcopy *c = z->mru, *next; c; c = next) {
        next = c->next;
        http_zcopy_release(c);
    }
    pthread_mutex_destroy(&z->lock);
    free(z);
    h->zcache = NULL;
}

/* text/..., JSON, JavaScript, SVG, XML (+xml, +json too) and wasm. */
int http_compressible(const char *mime)
{
    static const char *const types[] = {
        "application/json",       "application/javascript",   "application/x-javascript",
        "application/ecmascript", "application/xml",          "application/wasm",
        "image/svg+xml",          "application/manifest+json"};
    if (!strncmp(mime, "text/", 5))
        return 1;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(mime, types[i]))
            return 1;
    size_t n = strlen(mime);
    return n > 5 && (!strcmp(mime + n - 4, "+xml") || !strcmp(mime + n - 5, "+json"));
}

/* ---- the table (under z->lock) --------------------------------------------- */

static uint32_t key_hash(const char *path, int coding)
{
    uint32_t h = 2166136261u ^ (uint32_t)coding;
    for (; *path; path++)
        h = (h ^ (unsigned char)*path) * 16777619u;
    return h;
}

static size_t cost(const struct http_zcopy *c)
{
    return sizeof *c + c->len + strlen(c->path) + 1;
}

static void lru_unlink(struct http_zcache *z, struct http_zcopy *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        z->mru = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        z->lru = c->prev;
    c->prev = c->next = NULL;
}

static void lru_front(struct http_zcache *z, struct http_zcopy *c)
{
    c->next = z->mru;
    c->prev = NULL;
    if (z->mru)
        z->mru->prev = c;
    else
        z->lru = c;
    z->mru = c;
}

/* Unlink c from the table and drop the table's reference. */
static void remove_copy(struct http_zcache *z, struct http_zcopy *c)
{
    struct http_zcopy **pp = &z->buckets[c->hash % ZBUCKETS];
    while (*pp != c)
        pp = &(*pp)->hnext;
    *pp = c->hnext;
    lru_unlink(z, c);
    z->bytes -= cost(c);
    http_zcopy_release(c);
}

/* The copy of (path, coding) made from etag, held; a stale one (another
 * etag) is removed.  NULL when there is none. */
static struct http_zcopy *lookup(struct http_zcache *z, const char *path, int coding,
                                 const char *etag, uint32_t h)
{
    for (struct http_zcopy *c = z->buckets[h % ZBUCKETS]; c; c = c->hnext) {
        if (c->hash != h || c->coding != coding || strcmp(c->path, path))
            continue;
        if (strcmp(c->src_etag, etag)) {
            remove_copy(z, c);
            return NULL;
        }
        lru_unlink(z, c);
        lru_front(z, c);
        http_zcopy_hold(c);
        return c;
    }
    return NULL;
}

/* Insert c (its reference becomes the table's) unless an equal copy won
 * the race or it cannot fit; returns the copy to use, held. */
static struct http_zcopy *insert(struct http_zcache *z, struct http_zcopy *c)
{
    struct http_zcopy *had = lookup(z, c->path, c->coding, c->src_etag, c->hash);
    if (had) {
        http_zcopy_release(c);
        return had;
    }
    if (cost(c) > z->budget) {
        /* Served this once; an empty copy in its place says "do not
         * compress again" (else every request would). */
        struct http_zcopy *m = calloc(1, sizeof *m);
        if (m && (m->path = strdup(c->path))) {
            atomic_init(&m->refs, 1);
            m->coding = c->coding;
            m->hash = c->hash;
            memcpy(m->src_etag, c->src_etag, sizeof m->src_etag);
            http_zcopy_release(insert(z, m));
        } else {
            free(m);
        }
        return c;
    }
    while (z->lru && z->bytes + cost(c) > z->budget)
        remove_copy(z, z->lru);
    c->hnext = z->buckets[c->hash % ZBUCKETS];
    z->buckets[c->hash % ZBUCKETS] = c;
    lru_front(z, c);
    z->bytes += cost(c);
    http_zcopy_hold(c);
    return c;
}

/* ---- compressing ------------------------------------------------------------ */

static size_t gzip_into(const char *src, size_t n, char *dst, size_t cap)
{
    z_stream s = {0};
    if (deflateInit2(&s, GZIP_LEVEL, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return 0;
    s.next_in = (Bytef *)(uintptr_t)src;
    s.avail_in = (uInt)n;
    s.next_out = (Bytef *)dst;
    s.avail_out = (uInt)cap;
    int rc = deflate(&s, Z_FINISH);
    size_t out = rc == Z_STREAM_END ? cap - s.avail_out : 0;
    deflateEnd(&s);
    return out;
}

/* The coding of src[0..n) in a malloc'd buffer, when it saves >= 10 %. */
static char *compress_bytes(int coding, const char *src, size_t n, size_t *len)
{
    size_t cap = n - n / 10; /* anything larger is not kept anyway */
    char *dst = cap ? malloc(cap) : NULL;
    size_t out = 0;
    if (!dst)
        return NULL;
    if (coding == HTTP_ENC_GZIP) {
        out = gzip_into(src, n, dst, cap);
    } else if (coding == HTTP_ENC_ZSTD) {
        out = ZSTD_compress(dst, cap, src, n, ZSTD_LEVEL);
        out = ZSTD_isError(out) ? 0 : out;
    } else if (coding == HTTP_ENC_BR) {
        out = cap;
        if (!BrotliEncoderCompress(BROTLI_QUAL, BROTLI_DEFAULT_WINDOW, BROTLI_MODE_TEXT, n,
                                   (const uint8_t *)src, &out, (uint8_t *)dst))
            out = 0;
    }
    if (out == 0 || out > cap) {
        free(dst);
        return NULL;
    }
    char *fit = realloc(dst, out);
    *len = out;
    return fit ? fit : dst;
}

/* The whole file of e, read with pread, or NULL when it changed meanwhile. */
static char *read_all(const struct fentry *e, size_t n)
{
    char *buf = malloc(n ? n : 1);
    size_t got = 0;
    while (buf && got < n) {
        ssize_t k = pread(e->fd, buf + got, n - got, (off_t)got);
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    struct stat st;
    if (!buf || got != n || fstat(e->fd, &st) < 0 || st.st_size != e->st.st_size ||
        st.st_mtim.tv_sec != e->st.st_mtim.tv_sec || st.st_mtim.tv_nsec != e->st.st_mtim.tv_nsec) {
        free(buf);
        return NULL;
    }
    return buf;
}

static struct http_zcopy *make_copy(const struct fentry *e, int coding, uint32_t h)
{
    struct http_zcopy *c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(e->path))) {
        free(c);
        return NULL;
    }
    atomic_init(&c->refs, 1);
    c->coding = coding;
    c->hash = h;
    snprintf(c->src_etag, sizeof c->src_etag, "%s", e->etag);
    char *src = read_all(e, (size_t)e->st.st_size);
    if (!src) {
        zcopy_free(c);
        return NULL;
    }
    c->data = compress_bytes(coding, src, (size_t)e->st.st_size, &c->len);
    free(src);
    http_etag_coded(e->etag, e->etag_len, coding, c->etag, sizeof c->etag);
    c->etag_len = strlen(c->etag);
    return c;
}

struct http_zcopy *http_zcopy_get(iop_http *h, const struct fentry *e, int coding)
{
    struct http_zcache *z = h->zcache;
    uint32_t hash = key_hash(e->path, coding);
    pthread_mutex_lock(&z->lock);
    struct http_zcopy *c = lookup(z, e->path, coding, e->etag, hash);
    pthread_mutex_unlock(&z->lock);
    if (!c) {
        if (!(c = make_copy(e, coding, hash)))
            return NULL; /* the file changed under us: identity this time */
        pthread_mutex_lock(&z->lock);
        c = insert(z, c);
        pthread_mutex_unlock(&z->lock);
    }
    if (!c->data) { /* remembered: not worth it */
        http_zcopy_release(c);
        return NULL;
    }
    return c;
}

/* http_encoding.c - content codings: precompressed siblings, as nginx's
 * gzip_static and h2o's send-compressed.
 *
 * When a regular file is opened for the cache, FILE.gz, FILE.zst and
 * FILE.br are looked for beside it (beneath the root, as every open) and
 * those that are regular files not older than FILE are opened too and
 * held by its entry: the cost is per cache entry (reopened every second
 * at most), not per request.  A sibling is an entry of its own (fd,
 * stat, validators, mapping), so it is sent exactly as a file is, by
 * sendfile or from its mapping, and Range and conditional requests apply
 * to it.  Its ETag is its own with the coding appended: the same bytes
 * served as FILE.gz (application/gzip, no Content-Encoding) are another
 * representation.
 *
 * Entries are never changed once other threads may see them: a sibling
 * whose file changed since it was opened (fstat, once per loop iteration
 * on a reactor) is skipped until the parent entry is reopened. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/http_srv.h"

static const char *const suffix[HTTP_ENC_N] = {NULL, ".gz", ".zst", ".br"};
static const char *const token[HTTP_ENC_N] = {NULL, "gzip", "zstd", "br"};

static const char vary[] = "Vary: Accept-Encoding\r\n";
static const char *const with_vary[HTTP_ENC_N] = {
    vary,
    "Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n",
    "Content-Encoding: zstd\r\nVary: Accept-Encoding\r\n",
    "Content-Encoding: br\r\nVary: Accept-Encoding\r\n",
};

static int not_older(const struct stat *sib, const struct stat *file)
{
    if (sib->st_mtim.tv_sec != file->st_mtim.tv_sec)
        return sib->st_mtim.tv_sec > file->st_mtim.tv_sec;
    return sib->st_mtim.tv_nsec >= file->st_mtim.tv_nsec;
}

void http_etag_coded(const char *etag, size_t len, int coding, char *out, size_t outsz)
{
    snprintf(out, outsz, "%.*s-%s\"", len ? (int)len - 1 : 0, etag, token[coding]);
}

static void sibling_fill(struct fentry *s)
{
    char plain[64];
    size_t n = http_etag(&s->st, plain);
    http_etag_coded(plain, n, s->coding, s->etag, sizeof s->etag);
    s->etag_len = strlen(s->etag);
    http_date(s->st.st_mtime, s->lastmod);
}

static struct fentry *sibling_open(struct http_worker *w, const struct fentry *e, int c)
{
    char rel[HTTP_PATH_BYTES + 8];
    if ((size_t)snprintf(rel, sizeof rel, "%s%s", e->path, suffix[c]) >= sizeof rel)
        return NULL;
    int fd = http_open_beneath(w->http->rootfd, rel, O_RDONLY | O_NONBLOCK);
    if (fd < 0)
        return NULL;
    struct fentry *s = calloc(1, sizeof *s);
    if (!s || fstat(fd, &s->st) < 0 || !S_ISREG(s->st.st_mode) || !not_older(&s->st, &e->st) ||
        !(s->path = strdup(rel))) {
        free(s);
        close(fd);
        return NULL;
    }
    s->fd = fd;
    s->opened = e->opened;
    s->epoch = e->epoch;
    s->mime = e->mime;
    s->coding = c;
    atomic_init(&s->refs, 1); /* its parent's: freed at the last release */
    sibling_fill(s);
    return s;
}

void http_siblings_open(struct http_worker *w, struct fentry *e)
{
    for (int c = HTTP_ENC_GZIP; c < HTTP_ENC_N; c++)
        e->enc[c] = sibling_open(w, e, c);
}

void http_siblings_drop(struct fentry *e)
{
    for (int c = HTTP_ENC_GZIP; c < HTTP_ENC_N; c++) {
        if (e->enc[c])
            http_entry_release(e->enc[c]);
        e->enc[c] = NULL;
    }
}

static int same_file(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Is sibling s still the file it was, and not older than its parent (which
 * may have been rewritten in place)?  fstat once per loop iteration on a
 * reactor, every time elsewhere. */
static int sibling_ok(struct http_worker *w, const struct fentry *e, struct fentry *s)
{
    if (!not_older(&s->st, &e->st))
        return 0;
    if (w->loop && s->epoch == w->epoch)
        return 1;
    struct stat st;
    if (fstat(s->fd, &st) < 0 || st.st_nlink == 0 || !same_file(&st, &s->st))
        return 0;
    if (w->loop)
        s->epoch = w->epoch;
    return 1;
}

/* The codings --compress can offer for e: all three for a compressible
 * file within the size limit that has no siblings of its own. */
static unsigned compress_avail(const struct http_worker *w, const struct fentry *e)
{
    const iop_http *h = w->http;
    if (!h->zcache || e->coding || (uint64_t)e->st.st_size > h->cfg.compress_max ||
        e->st.st_size == 0 || !http_compressible(e->mime))
        return 0;
    return 1u << HTTP_ENC_GZIP | 1u << HTTP_ENC_ZSTD | 1u << HTTP_ENC_BR;
}

int http_encoding_pick(struct http_worker *w, const struct http_req *req, struct fentry *e,
                       struct fentry **rep, const char **hdrs, struct http_zcopy **z)
{
    unsigned avail = 0, made = 0;
    for (int c = HTTP_ENC_GZIP; c < HTTP_ENC_N; c++)
        if (e->enc[c] && sibling_ok(w, e, e->enc[c]))
            avail |= 1u << c;
    if (!avail)
        made = avail = compress_avail(w, e);
    int q[HTTP_ENC_N];
    http_accept_encoding(req->accept_encoding.p, req->accept_encoding.n, q);
    int c = http_encoding_choose(q, avail);
    /* A coding whose copy does not pay is offered no more: the next best. */
    *z = NULL;
    while (c > 0 && (made & (1u << c)) && !(*z = http_zcopy_get(w->http, e, c))) {
        avail &= ~(1u << c);
        c = http_encoding_choose(q, avail);
    }
    /* Without siblings or --compress nothing varies: no Vary, as before
     * (but 406 for a client that refuses identity). */
    *hdrs = avail || made || c < 0 ? with_vary[c > 0 ? c : 0] : "";
    *rep = e;
    if (c < 0) {
        http_entry_release(e);
        return c;
    }
    if (c > 0 && !*z) {
        *rep = e->enc[c];
        http_entry_hold(*rep);
        http_entry_release(e);
    }
    return 0;
}

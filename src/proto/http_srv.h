/* http_srv.h - the HTTP server core that both handler styles share
 * (private to proto).
 *
 *   http.c           state, the open-file cache, one request -> one response
 *   http_event.c     event style: streams, pipelining, header deadlines
 *   http_blocking.c  blocking style: iop_conn (iterative, thread, fork, coro)
 *
 * A worker is the per-thread state of one iop_http: its file cache, its
 * cached date strings and its access-log buffer.  Reactor threads (event,
 * coro) keep one for the server's life; a blocking handler in the other
 * models keeps one per connection (threads and processes come and go). */
#ifndef IOP_PROTO_HTTP_SRV_H
#define IOP_PROTO_HTTP_SRV_H

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "ioplex/proto.h"
#include "proto/http_int.h"

#define HTTP_BODY_LIMIT (1u << 20) /* a GET/HEAD body is thrown away up to this */
#define HTTP_PATH_BYTES 4096
#define HTTP_FC_SLOTS   256   /* open-file cache entries per worker */
#define HTTP_MAP_MAX    16384 /* event model: a file this small goes in the head's writev */

#define HTTP_FC_STRIPES 16 /* locks of the shared cache */

/* The open-file cache that the blocking models' connections share (one
 * per process): an idle connection holds no file, and the files held are
 * bounded by the slots, not by the connections.  Slot i is guarded by
 * locks[i % HTTP_FC_STRIPES], held only to look at or replace the slot:
 * opening and fstat happen outside. */
struct http_fcache {
    pthread_mutex_t locks[HTTP_FC_STRIPES];
    struct fentry *slots[HTTP_FC_SLOTS];
};

struct iop_http {
    int rootfd;
    struct iop_http_config cfg; /* defaults applied */
    /* Header lines (CRLF included) built once: extra goes on every
     * response (CORS, --header), file_extra on files (Cache-Control). */
    char *extra, *file_extra;
    size_t extra_len, file_extra_len;
    struct http_zcache *zcache; /* compressed copies (cfg.compress), or NULL */
    pthread_mutex_t lock;       /* guards workers */
    struct http_worker *workers;
    struct http_fcache shared;
};

/* A cached open file.  refs counts its holders: the cache slot that keeps
 * it, and each response still sending from it; the last one closes it.
 * Atomic, since the blocking models' cache is shared by threads; what
 * else an entry holds is fixed once it is in a shared cache (a changed
 * file gets a new entry there). */
struct fentry {
    char *path;
    int fd;
    atomic_uint refs;
    time_t opened;
    uint64_t epoch; /* the worker's epoch when last checked */
    struct stat st;
    const char *mime;
    char etag[64];
    char lastmod[HTTP_DATE_LEN + 1];
    size_t etag_len;
    const char *map; /* http_entry_map: the file's bytes, or NULL */
    int map_tried;
    /* Precompressed siblings (FILE.gz, FILE.zst, FILE.br) found when the
     * entry was opened, each held by it; [HTTP_ENC_IDENTITY] is unused.
     * A sibling's coding is its own HTTP_ENC_*, 0 for a plain file. */
    struct fentry *enc[HTTP_ENC_N];
    int coding;
};

/* A compressed copy of one version of a file (http_compress.c).  data
 * NULL: compressing did not pay; remembered so that it is not tried again.
 * Immutable once made, but for refs and the table's links. */
struct http_zcopy {
    atomic_uint refs;
    int coding; /* HTTP_ENC_* */
    char *path;
    uint32_t hash;
    char *data;
    size_t len;
    char src_etag[64]; /* the identity ETag it was made from */
    char etag[80];     /* its own: src_etag with the coding appended */
    size_t etag_len;
    struct http_zcopy *hnext, *prev, *next; /* bucket chain, LRU list */
};

struct hconn;

struct http_peer {
    const void *owner; /* the stream the name belongs to; NULL: free */
    char name[46];     /* INET6_ADDRSTRLEN */
};

struct http_worker {
    iop_http *http;
    iop_loop *loop; /* event workers: the reactor; else NULL */
    int cache;      /* the file cache is on: slots, or shared when set */
    struct fentry *slots[HTTP_FC_SLOTS];
    struct http_fcache *shared;
    time_t date_t, clf_t;
    char date[HTTP_DATE_LEN + 1];
    char clf[64];
    /* Access log: event workers gather lines and write them once per loop
     * iteration. */
    char *log;
    size_t loglen, logcap;
    iop_defer flush;
    /* Reactor workers: cache entries are checked once per loop iteration
     * (an iteration's requests arrived together); the epoch moves on in a
     * deferred callback before the loop waits again. */
    uint64_t epoch;
    iop_defer tick;
    /* Event workers, access log on: each connection's peer as text, by fd,
     * filled at its first logged request and cleared in on_close, so the
     * log costs no getpeername per request. */
    struct http_peer *peers;
    size_t npeers;
    /* Event workers: connections inside a request head, oldest first (one
     * deadline for all, so arrival order is deadline order). */
    struct hconn *to_head, *to_tail;
    iop_timer to_timer;
    struct http_worker *next;
};

/* One response, ready to send: head bytes, then either body bytes or a
 * file range (body_fd >= 0). */
struct http_resp {
    int status;
    int close; /* close the connection after it */
    char *head;
    size_t head_len, head_cap;
    const char *body;
    size_t body_len;
    char *body_alloc;
    int fd; /* file body, or -1 */
    off_t off;
    size_t len;
    struct fentry *ent;   /* held cache entry, or NULL: fd is ours to close */
    struct http_zcopy *z; /* held compressed copy the body points into, or NULL */
    /* multipart/byteranges: nparts parts (the last one the closing
     * boundary, without data), their text in body_alloc, their data slices
     * of the file (fd) or of z's bytes. */
    struct http_part *parts;
    int nparts;
    char boundary[36];
    uint64_t log_bytes; /* body bytes, for the access log */
    const char *extra;  /* the server's header lines for every response */
    size_t extra_len;
    size_t head_extra; /* bytes of configured headers a head may carry */
    char small[768];   /* head is this, unless a long Location needed more */
};

/* A cached file's bytes, mapped (read only, shared) at the first call:
 * NULL when over HTTP_MAP_MAX or not mappable.  Small bodies then leave in
 * the same writev / sendmsg as the head: one system call per response, and
 * on io_uring no splice (which the kernel hands to a worker thread).  The
 * kernel copies from the page cache as sendfile would read it; user space
 * never touches the mapping, so a file truncated meanwhile makes the send
 * fail with EFAULT (the connection closes), never SIGBUS.  A mapped entry
 * whose file changes is reopened rather than updated in place. */
const char *http_entry_map(struct fentry *e);
/* http_cache.c: the entry for rel, held (release with http_entry_release):
 * from the worker's cache when it is still the file (fstat), else opened
 * beneath the root.  0 or -errno. */
int http_entry_get(struct http_worker *w, const char *rel, struct fentry **out);
/* Hold / release an entry beyond its response (a body lent to a stream). */
void http_entry_hold(struct fentry *e);
void http_entry_release(void *e);

/* The worker of the calling thread for (http, loop), made on first use. */
struct http_worker *http_worker_get(iop_http *http, iop_loop *loop);
/* A worker on the caller's stack (blocking models), without a cache until
 * the caller sets cache (and shared, for the process's one). */
void http_worker_local(struct http_worker *w, iop_http *http);
void http_worker_fini(struct http_worker *w);

/* Build the response to a parsed head (err == 0) or to a head the parser
 * refused (err: -400, -414, -431, -505).  stopping: the server is
 * stopping, so the connection closes after this response. */
void http_respond(struct http_worker *w, const struct http_req *req, int err, int stopping,
                  struct http_resp *r);
/* A 503 for req (NULL: a refused head), closing the connection: the
 * response built for it could not be sent for want of descriptors or
 * memory. */
void http_respond_unavailable(struct http_worker *w, const struct http_req *req,
                              struct http_resp *r);
/* Room for a head of need bytes plus the configured headers: 0, or
 * -ENOMEM.  Only before anything was put. */
int http_head_reserve(struct http_resp *r, size_t need);
/* Head building, for the other files of the core. */
void http_head_begin(struct http_worker *w, struct http_resp *r, int status);
void http_head_end(struct http_resp *r, const struct http_req *req);
void http_put(struct http_resp *r, const char *s, size_t n);
void http_puts(struct http_resp *r, const char *s);
void http_error_page(struct http_worker *w, struct http_resp *r, const struct http_req *req,
                     int status);

/* http_headers.c: the configured header lines (iop_http_new) and the
 * answer to OPTIONS when CORS is on. */
int http_headers_init(iop_http *h);
void http_headers_fini(iop_http *h);
void http_options(struct http_worker *w, struct http_resp *r, const struct http_req *req);

/* http_listing.c: the listing of directory dirfd as the response (*err 0),
 * or *err < 0 (-errno) and nothing built. */
void http_listing(struct http_worker *w, struct http_resp *r, const struct http_req *req,
                  const char *rel, struct http_str query, int dirfd, int *err);

/* http_encoding.c: precompressed siblings.  Open those of e (a regular
 * file just opened) that are regular and not older than it. */
void http_siblings_open(struct http_worker *w, struct fentry *e);
/* Let go of e's siblings (e is being freed). */
void http_siblings_drop(struct fentry *e);
/* The representation of e to send for req: *rep is e or one of its
 * siblings, held (e itself is released), *hdrs the header lines it adds
 * (Content-Encoding, Vary; "" when the file has no other forms).  -406
 * when Accept-Encoding accepts none (e released, *hdrs the Vary line). */
int http_encoding_pick(struct http_worker *w, const struct http_req *req, struct fentry *e,
                       struct fentry **rep, const char **hdrs, struct http_zcopy **z);
/* etag (a quoted strong ETag of len bytes) with "-<coding>" appended inside
 * its quotes, NUL-terminated in out[outsz]. */
void http_etag_coded(const char *etag, size_t len, int coding, char *out, size_t outsz);

/* http_compress.c: the table of compressed copies (cfg.compress).
 * http_zcopy_get: the copy of e in coding, made now when there is none for
 * this version of the file; held.  NULL when compressing does not pay, the
 * file changed meanwhile, or memory ran out: send identity. */
int http_zcache_new(iop_http *h);
void http_zcache_free(iop_http *h);
int http_compressible(const char *mime);
struct http_zcopy *http_zcopy_get(iop_http *h, const struct fentry *e, int coding);
void http_zcopy_hold(struct http_zcopy *c);
void http_zcopy_release(void *c);

/* One part of a multipart body: text (boundary line, part headers) at
 * text_off in the response's body_alloc, then len bytes at off of the
 * representation. */
struct http_part {
    size_t text_off, text_len;
    uint64_t off, len;
};

/* Last-Modified, ETag and the configured file headers of e. */
void http_file_headers(struct http_worker *w, struct http_resp *r, const struct fentry *e);
/* http_range.c: the 206 multipart/byteranges answer for n > 1 coalesced
 * ranges of the representation v (the file e, or the copy z of it; both
 * held, and kept by r or released). */
void http_serve_parts(struct http_worker *w, struct http_resp *r, const struct http_req *req,
                      struct fentry *e, const struct fentry *v, struct http_zcopy *z,
                      const char *hdrs, const struct http_byterange *rg, int n);

/* After sending: release the file and any allocation. */
void http_resp_done(struct http_worker *w, struct http_resp *r);

/* One access-log line for the request (req NULL or err < 0: the head was
 * refused).  host: the peer as text (http_peer_name). */
void http_log(struct http_worker *w, const char *host, const struct http_req *req, int err,
              const struct http_resp *r);
/* The peer of socket fd as the log shows it ("-" for Unix sockets). */
void http_peer_name(int fd, char *out, size_t outsz);
/* Write what event workers gathered (also the defer callback). */
void http_log_flush(struct http_worker *w);

/* TCP_NODELAY on a connection (ignored for Unix sockets). */
void http_nodelay(int fd);

/* http_event.c / http_blocking.c: the two handler styles. */
void http_event_handler(struct iop_handler *h);
void http_blocking_handler(struct iop_handler *h);
/* A worker being freed: event state that hangs on it. */
void http_event_worker_fini(struct http_worker *w);

#endif

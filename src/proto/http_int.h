/* http_int.h - the pieces of the HTTP/1.1 static file server (private to
 * proto).
 *
 *   http_parse.c   request heads and chunked bodies: pure functions over
 *                  bytes, no allocation, fuzzed (tests/fuzz/fuzz_http.c)
 *   http_util.c    target -> path, containment (openat2), dates, ranges,
 *                  ETags, escaping, Locations
 *   http_mime.c    MIME types
 *   http_negotiate.c  Accept and Accept-Encoding (fuzz_http_negotiate.c)
 *   http_listing.c directory listings (HTML and JSON)
 * The server around them is http_srv.h's.
 *
 * Errors that become a response are negative HTTP status codes (-400,
 * -404, ...); other errors are negative errno values. */
#ifndef IOP_PROTO_HTTP_INT_H
#define IOP_PROTO_HTTP_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

/* A slice of the request buffer; {NULL, 0} when absent. */
struct http_str {
    const char *p;
    size_t n;
};

enum http_method {
    HTTP_M_GET = 1,
    HTTP_M_HEAD,
    HTTP_M_OPTIONS, /* answered with CORS on, else as HTTP_M_KNOWN */
    HTTP_M_KNOWN,   /* a registered method we do not allow: 405 */
    HTTP_M_UNKNOWN, /* a well-formed token we do not know: 501 */
};

struct http_req {
    int method;               /* HTTP_M_* */
    struct http_str method_s; /* as sent */
    struct http_str target;   /* as sent: origin-form, absolute-form or "*" */
    struct http_str line;     /* the request line without its line end (access log) */
    int minor;                /* HTTP/1.minor: 0, or 1 for any minor >= 1 */
    unsigned has_host : 1;    /* exactly one Host header */
    unsigned conn_close : 1;  /* Connection has the "close" token */
    unsigned conn_keep : 1;   /* Connection has the "keep-alive" token */
    unsigned chunked : 1;     /* Transfer-Encoding ends in "chunked" */
    int64_t content_length;   /* -1: no Content-Length */
    struct http_str if_none_match, if_modified_since, range; /* values, OWS trimmed */
    /* The first field line of each; {NULL, 0} when absent. */
    struct http_str accept, accept_encoding, acr_headers; /* acr: Access-Control-Request- */
    /* If-None-Match is a list that may span several field lines: the
     * second to fourth (more are ignored). */
    struct http_str inm_more[3];
    unsigned n_inm_more;
    struct http_str if_range; /* value, OWS trimmed (the first one) */
};

/* Parse one request head at the start of buf[0..len).
 *
 * The blank line that ends a head is searched from *scan on (start with
 * *scan = 0 for a new head; the function advances it), so feeding a head a
 * byte at a time costs linear time in total; the head is parsed only once
 * it is complete.  Empty lines before the request line are skipped (and
 * counted in the head's length).  Lines may end in CRLF or a bare LF.
 *
 * Returns the head's length in bytes (through the blank line) and fills
 * *req; 0 when more bytes are needed (only while len < max_header); or
 *   -400  malformed: bad request line, bad header line (space before the
 *         colon, obs-fold, no colon), a NUL or a bare CR anywhere, invalid
 *         or conflicting Content-Length, Content-Length together with
 *         Transfer-Encoding, a Transfer-Encoding not ending in chunked,
 *         HTTP/1.1 without Host (or with two, or an invalid one:
 *         http_host_valid), a target that is empty or
 *         holds a control character or space
 *   -414  no complete request line within max_header bytes
 *   -431  the head is longer than max_header bytes
 *   -505  a version other than HTTP/1.x
 * -414 / -431 come as soon as len >= max_header with no end found; other
 * errors only once the head is complete.  *req is valid only after a
 * result > 0.  Two Host headers are -400 in HTTP/1.0 too. */
int http_parse_head(const char *buf, size_t len, size_t max_header, size_t *scan,
                    struct http_req *req);

/* Whether s[0..n) is a valid Host field value: empty, or uri-host [":"
 * port] of RFC 3986 (a reg-name of unreserved, pct-encoded and sub-delims
 * but ',', an IPv4 address, or an IP-literal "[IPv6]" / "[vX.Y]"; port
 * digits only).  A comma is refused because it makes the value a list:
 * several hosts.  http_parse_head answers -400 for a Host it refuses. */
int http_host_valid(const char *s, size_t n);

/* A chunked body being read and thrown away. */
struct http_chunked {
    int state;      /* private; 0 at the start of a body */
    uint64_t size;  /* private */
    uint64_t total; /* payload bytes seen so far */
};

/* Consume the next bytes of a chunked body (chunk extensions and trailers
 * are skipped).  Returns the bytes consumed (< len only when the body
 * ended: *done is then 1 and the rest belongs to the next request), or
 * -400 for a malformed body (also a chunk-size line over 4096 bytes or
 * trailers over 8192), -413 as soon as a chunk size would take the
 * payload past limit. */
ssize_t http_chunked_skip(struct http_chunked *c, const char *buf, size_t len, uint64_t limit,
                          int *done);

/* ---- http_util.c ---------------------------------------------------------- */

/* Split a request target into its path and query (without the '?'; the
 * fragment, if a client sent one, is dropped).  absolute-form
 * ("http://host:port/p?q", scheme case-insensitive, http or https) yields
 * its path ("/" when it has none).  0, or -400 when the target is neither
 * origin-form nor absolute-form ("*" included). */
int http_target_split(const char *t, size_t n, struct http_str *path, struct http_str *query);

/* The raw path (from http_target_split) to a path relative to the served
 * directory: percent-decoded, empty and "." segments dropped, ".."
 * segments applied.  out gets the segments joined by '/', no leading or
 * trailing slash, "" for the root; NUL-terminated.  *dir_form is set to 1
 * when the raw path ends in '/', in a "." or ".." segment, or the result
 * is the root.  Returns the length of
 * out, or -400 for a bad escape, %00 or a NUL, -404 when ".." would climb
 * above the root, -414 when out (outsz bytes with its NUL) is too small.
 * Decoding comes before dot segments: "%2e%2e" is "..", "%2f" a
 * separator, and neither can climb out. */
int http_path_resolve(const char *raw, size_t n, char *out, size_t outsz, int *dir_form);

/* Open rel (from http_path_resolve; "" is the root itself) beneath rootfd:
 * openat2 with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS, so that no symlink
 * or ".." leads out of the directory (a symlink inside that stays inside is
 * followed).  Where openat2 is missing (ENOSYS), each component is opened
 * with O_NOFOLLOW and a symlink is refused.  flags: O_RDONLY plus e.g.
 * O_DIRECTORY; O_CLOEXEC is added.  An fd, or -errno (-EXDEV or -ELOOP:
 * escaping or refused symlink; -ENOENT, -EACCES, -ENOTDIR, ...). */
int http_open_beneath(int rootfd, const char *rel, int flags);

/* The Content-Type for a file name, by its extension (case-insensitive)
 * from /etc/mime.types, loaded once per process on first use (thread-safe);
 * "application/octet-stream" when unknown.  Returned exactly as the table
 * has it (no charset added). */
const char *http_mime_type(const char *name, size_t len);
/* The same, NULL when the extension is unknown. */
const char *http_mime_lookup(const char *name, size_t len);
/* The table from another file (tests); NULL: /etc/mime.types.  Call
 * before the first http_mime_type (after it: -EALREADY); 0 or -errno. */
int http_mime_load(const char *file);

/* IMF-fixdate, "Sun, 06 Nov 1994 08:49:37 GMT": always 29 characters plus
 * the NUL written to out[30] (years clamped to 1970..9999). */
#define HTTP_DATE_LEN 29
void http_date(time_t t, char out[HTTP_DATE_LEN + 1]);
/* Parse an HTTP date in any of the three forms of RFC 9110 §5.6.7
 * (IMF-fixdate, RFC 850, asctime).  0, or -EINVAL. */
int http_date_parse(const char *s, size_t n, time_t *out);

/* A Range header value against a file of size bytes:
 *   0   serve the whole file: syntax not understood (ignored, as RFC 9110
 *       allows), not "bytes=", or several ranges
 *   1   one satisfiable range: *first..*last inclusive, within the file
 *  -416 one range that no byte of the file satisfies (incl. size 0) */
int http_range(const char *s, size_t n, uint64_t size, uint64_t *first, uint64_t *last);

/* Several ranges (http_range.c): up to HTTP_RANGES_MAX specs, of which
 * those no byte of the file satisfies are dropped and the rest sorted and
 * coalesced (overlapping or adjacent ones merged) into out[]:
 *   n > 0  the count in out (1: a single range, as http_range's)
 *   0      serve the whole file: not understood, not "bytes=", more than
 *          HTTP_RANGES_MAX specs, or more bytes asked for than the file has
 *  -416    no spec is satisfiable */
#define HTTP_RANGES_MAX 16
struct http_byterange {
    uint64_t first, last; /* inclusive */
};
int http_ranges(const char *s, size_t n, uint64_t size, struct http_byterange *out);

/* If-Range value v[0..n) against the file's validators (RFC 9110
 * §13.1.5): 1 when the Range may be honoured, 0 when it must be ignored
 * (200 with the whole file).  An entity-tag matches by the strong
 * comparison only (a weak tag never does); an HTTP-date only when it is
 * exactly mtime and that is a strong validator: its second is over
 * (mtime < now), so the file cannot change again within the second the
 * date names.  Anything else is 0. */
int http_if_range(const char *v, size_t n, const char *etag, size_t etag_len, time_t mtime,
                  time_t now);

/* The strong validator of a file: "\"<hex ino>-<hex size>-<hex mtime ns>\""
 * (quotes included), NUL-terminated; its length. out needs >= 64 bytes. */
size_t http_etag(const struct stat *st, char *out);
/* If-None-Match value against etag: 1 when "*" or any listed tag matches
 * by the weak comparison (W/ ignored on both sides), else 0. */
int http_etag_match(const char *list, size_t n, const char *etag, size_t etag_len);

/* Escape & < > " ' for HTML.  Returns the length it needs (without NUL);
 * writes at most outsz bytes including a NUL (snprintf-like). */
size_t http_html_escape(const char *s, size_t n, char *out, size_t outsz);
/* Percent-encode every byte but ALPHA DIGIT - . _ ~ (and '/' when
 * keep_slash).  snprintf-like as above. */
size_t http_pct_encode(const char *s, size_t n, int keep_slash, char *out, size_t outsz);

/* The Location of directory rel (from http_path_resolve, not "") with its
 * trailing slash: "/" rel "/" with every byte but unreserved ones, sub-delims,
 * ':', '@' and the separating '/' percent-encoded, so it is a valid
 * absolute path that cannot begin with "//" (no authority) whatever the
 * request's bytes were; then "?" query when query->p, its bytes kept but
 * those a query may not hold (controls, space, '"', '#', backslash, non-ASCII,
 * a '%' not starting an escape...) percent-encoded.  snprintf-like.  At
 * most 3 * (strlen(rel) + query->n) + 3 bytes. */
size_t http_dir_location(const char *rel, const struct http_str *query, char *out, size_t outsz);

/* For the access log: s[0..n) with every byte outside 0x20..0x7e, and '"'
 * and backslash, written as "\xHH" (as nginx does), so that a logged field can
 * neither end its quotes nor reach a terminal as a control.  out needs 4 *
 * n bytes; not NUL-terminated.  Returns the bytes written. */
size_t http_log_escape(const char *s, size_t n, char *out);

/* ---- http_listing.c ------------------------------------------------------- */

enum { HTTP_SORT_NAME, HTTP_SORT_SIZE, HTTP_SORT_TIME };

struct http_listing_opts {
    int sort; /* HTTP_SORT_* */
    int desc;
    int json;
};

/* A listing of directory dirfd (not closed), "." and ".." left out,
 * directories first (symlinks to directories too), then by o->sort (ties
 * by name, bytewise), o->desc reversing both groups; o NULL: by name.
 * HTML (o->json 0): title and heading "Directory listing for DISPLAY"
 * (display: the decoded URL path, e.g. "/a b/"), a table of name (a
 * trailing '/' on directories), size (human; exact in title and
 * data-bytes) and modified time, column heads that sort, a parent link
 * unless display is "/", an inline stylesheet with a dark scheme.  JSON:
 * [{"name","type" ("file", "dir", "other"),"size","mtime" (RFC 3339,
 * UTC),"url"}].  Names are HTML- or JSON-escaped as text (bytes that are
 * not printable UTF-8 become U+FFFD) and percent-encoded in hrefs and
 * urls; directory hrefs keep a non-default sort.  *body is malloc'd and
 * NUL-terminated.  0 or -errno. */
int http_dir_listing(int dirfd, const char *display, const struct http_listing_opts *o, char **body,
                     size_t *len);
/* sort= and order= from a query string (anything else: name, asc). */
void http_listing_query(struct http_str query, struct http_listing_opts *o);

/* ---- http_negotiate.c: Accept and Accept-Encoding (pure, fuzzed) ------------ */

/* One element of a comma-separated list with an optional q parameter
 * (Accept, Accept-Encoding): name without parameters, q in thousandths
 * (1000 when absent).  Elements whose q is malformed come back with q -1. */
struct http_qitem {
    struct http_str name;
    int q;
};
/* The next element of *rest (advanced); 0 at the end.  Empty elements are
 * skipped; commas inside quoted parameter values do not split. */
int http_qlist_next(struct http_str *rest, struct http_qitem *it);

/* Does an Accept value prefer application/json to HTML?  1 when
 * application/json is listed with q > 0 and no less than the best of
 * text/html, text/ * and * / *; else 0. */
int http_accept_json(const char *s, size_t n);

enum { HTTP_ENC_IDENTITY, HTTP_ENC_GZIP, HTTP_ENC_ZSTD, HTTP_ENC_BR, HTTP_ENC_N };
/* The q of each coding (thousandths) by an Accept-Encoding value (s NULL:
 * no header, identity only).  "*" gives its q to the codings not listed;
 * identity not listed is acceptable as the last resort (q 1) unless
 * "*;q=0" excludes it; "x-gzip" is gzip; names are case-insensitive. */
void http_accept_encoding(const char *s, size_t n, int q[HTTP_ENC_N]);
/* The coding to send among avail (bit 1 << HTTP_ENC_*; identity is always
 * available): the highest q > 0, ties by br, zstd, gzip, identity.  -406
 * when none is acceptable. */
int http_encoding_choose(const int q[HTTP_ENC_N], unsigned avail);

#endif

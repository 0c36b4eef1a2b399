/* http_parse.c - request heads and chunked bodies (see http_int.h).
 *
 * Choices the contract leaves open:
 *   - Content-Length may be a comma-separated list of identical values
 *     ("5, 5"), which RFC 9112 §6.3 lets a recipient read as one value;
 *     an empty element or two different values is -400.
 *   - Two Host headers are -400 for HTTP/1.0 too (RFC 9112 §3.2); only
 *     the missing Host is an HTTP/1.1 rule.  An empty Host is valid (a
 *     client sends one for a target without authority); a comma in it is
 *     not, although RFC 3986 allows ',' in a reg-name: it lists hosts.
 *   - A field value holding a control character other than HTAB (or DEL)
 *     is -400, as is a target holding one.
 *   - A head of nothing but empty lines up to max_header is -414: it has
 *     no complete request line.
 *   - Transfer-Encoding is honoured in HTTP/1.0 requests too; RFC 9112
 *     §6.1 asks the handler to close the connection after such a one.
 *   - A max_header above INT_MAX counts as INT_MAX (the length is an int).
 *   - A chunked body is refused (-413) as soon as a chunk-size line shows
 *     that the payload would pass the limit, before its data arrives, so
 *     total itself never passes the limit.  A chunk-size line (with its
 *     extensions) over CHUNK_LINE_MAX bytes and a trailer section over
 *     TRAILER_MAX bytes are -400: nothing else bounds them. */
#include <arpa/inet.h>
#include <limits.h>
#include <string.h>

#include "proto/http_int.h"

/* ---- bytes ----------------------------------------------------------------- */

/* RFC 9110 tchar, as a bitmap of the 128 ASCII codes: every header name's
 * bytes go through here, and '-' is in most of them. */
static int is_tchar(unsigned char c)
{
    static const uint32_t map[4] = {
        0x00000000u, /* controls */
        0x03ff6cfau, /* ! # $ % & ' * + - . 0-9 */
        0xc7fffffeu, /* A-Z ^ _ */
        0x57ffffffu, /* ` a-z | ~ */
    };
    return c < 128 && (map[c >> 5] >> (c & 31) & 1u);
}

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* CTL or DEL: never valid in a target or a field value (HTAB aside). */
static int is_ctl(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/* ASCII only: header names must not depend on the locale. */
static unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

static int eq_nocase(struct http_str s, const char *lit)
{
    size_t n = strlen(lit);
    if (s.n != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s.p[i]) != lower((unsigned char)lit[i]))
            return 0;
    return 1;
}

static int eq_exact(struct http_str s, const char *lit)
{
    return s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0;
}

static struct http_str trim(const char *p, size_t n)
{
    while (n && is_ows(p[0])) {
        p++;
        n--;
    }
    while (n && is_ows(p[n - 1]))
        n--;
    return (struct http_str){p, n};
}

/* The next element of the comma-separated list *rest, OWS trimmed (empty
 * elements included); 0 once the list is used up.  *rest->p == NULL marks
 * the end, so an empty value still yields one (empty) element. */
static int list_next(struct http_str *rest, struct http_str *elem)
{
    if (!rest->p)
        return 0;
    const char *comma = memchr(rest->p, ',', rest->n);
    size_t k = comma ? (size_t)(comma - rest->p) : rest->n;
    *elem = trim(rest->p, k);
    if (comma)
        *rest = (struct http_str){comma + 1, rest->n - k - 1};
    else
        *rest = (struct http_str){NULL, 0};
    return 1;
}

/* ---- Host ------------------------------------------------------------------ */

/* RFC 3986 reg-name bytes but pct-encoded: unreserved and sub-delims, less
 * ','.  IPv4 addresses are made of them too. */
static int is_regname(unsigned char c)
{
    static const uint32_t map[4] = {
        0x00000000u, /* controls */
        0x2bff6fd2u, /* ! $ & ' ( ) * + - . 0-9 ; = */
        0x87fffffeu, /* A-Z _ */
        0x47fffffeu, /* a-z ~ */
    };
    return c < 128 && (map[c >> 5] >> (c & 31) & 1u);
}

static int is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (lower(c) >= 'a' && lower(c) <= 'f');
}

static int reg_name(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (n - i < 3 || !is_hex((unsigned char)s[i + 1]) || !is_hex((unsigned char)s[i + 2]))
                return 0;
            i += 2;
        } else if (!is_regname(c)) {
            return 0;
        }
    }
    return 1;
}

/* "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" ) */
static int ipv_future(const char *s, size_t n)
{
    size_t i = 1;
    if (n < 4 || lower((unsigned char)s[0]) != 'v')
        return 0;
    while (i < n && is_hex((unsigned char)s[i]))
        i++;
    if (i == 1 || i + 1 >= n || s[i] != '.')
        return 0;
    for (i++; i < n; i++)
        if (!is_regname((unsigned char)s[i]) && s[i] != ':')
            return 0;
    return 1;
}

/* The inside of "[...]": an IPv6 address (no zone) or an IPvFuture. */
static int ip_literal(const char *s, size_t n)
{
    char text[64];
    unsigned char addr[16];
    if (n && lower((unsigned char)s[0]) == 'v')
        return ipv_future(s, n);
    if (n == 0 || n >= sizeof text || memchr(s, '\0', n))
        return 0;
    memcpy(text, s, n);
    text[n] = '\0';
    return inet_pton(AF_INET6, text, addr) == 1;
}

int http_host_valid(const char *s, size_t n)
{
    size_t host = n;
    if (n && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close || !ip_literal(s + 1, (size_t)(close - s) - 1))
            return 0;
        host = (size_t)(close - s) + 1;
        if (host < n && s[host] != ':')
            return 0;
    } else {
        const char *colon = memchr(s, ':', n);
        host = colon ? (size_t)(colon - s) : n;
        if (!reg_name(s, host))
            return 0;
    }
    for (size_t i = host + 1; i < n; i++) /* the port */
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* ---- finding the end of a head --------------------------------------------- */

/* Whether the line ending in the LF at b[i] is empty: LF or CRLF alone. */
static int empty_line(const char *b, size_t i)
{
    return i == 0 || b[i - 1] == '\n' || (b[i - 1] == '\r' && (i == 1 || b[i - 2] == '\n'));
}

/* Whether the LF at b[i] ends the head.  The head ends at the first empty
 * line that follows a non-empty one: every line before the request line is
 * empty and none from it on is, until the end.  This looks back at most
 * four bytes, which is what lets the search resume anywhere. */
static int ends_head(const char *b, size_t i)
{
    if (!empty_line(b, i))
        return 0;
    size_t start = i > 0 && b[i - 1] == '\r' ? i - 1 : i;
    return start > 0 && !empty_line(b, start - 1);
}

/* No end within b[0..lim): is a request line complete in there? */
static int too_long(const char *b, size_t lim)
{
    const char *lf;
    for (size_t at = 0; at < lim && (lf = memchr(b + at, '\n', lim - at)); at = lf - b + 1)
        if (!empty_line(b, (size_t)(lf - b)))
            return -431;
    return -414;
}

/* ---- parsing a complete head ----------------------------------------------- */

/* What the fields add up to; checked once all are seen. */
struct fields {
    unsigned hosts;
    int te;                  /* a Transfer-Encoding field was seen */
    struct http_str te_last; /* the last coding named so far */
};

/* The line starting at *pos (which the head's final LF bounds), without its
 * line end.  Any CR left inside is one not followed by LF. */
static int next_line(const char *b, size_t n, size_t *pos, struct http_str *line)
{
    const char *p = b + *pos, *lf = memchr(p, '\n', n - *pos);
    size_t k = (size_t)(lf - p);
    *pos += k + 1;
    if (k && p[k - 1] == '\r')
        k--;
    if (memchr(p, '\0', k) || memchr(p, '\r', k))
        return -400;
    *line = (struct http_str){p, k};
    return 0;
}

static int method_kind(struct http_str m)
{
    static const char *const known[] = {"POST", "PUT", "DELETE", "CONNECT", "TRACE", "PATCH"};
    if (eq_exact(m, "GET"))
        return HTTP_M_GET;
    if (eq_exact(m, "HEAD"))
        return HTTP_M_HEAD;
    if (eq_exact(m, "OPTIONS"))
        return HTTP_M_OPTIONS;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (eq_exact(m, known[i]))
            return HTTP_M_KNOWN;
    return HTTP_M_UNKNOWN;
}

/* "HTTP/" DIGIT "." DIGIT, case-sensitive (RFC 9112 §2.3). */
static int parse_version(const char *p, size_t n, struct http_req *req)
{
    if (n != 8 || memcmp(p, "HTTP/", 5) != 0 || p[6] != '.' || p[5] < '0' || p[5] > '9' ||
        p[7] < '0' || p[7] > '9')
        return -400;
    if (p[5] != '1')
        return -505;
    req->minor = p[7] != '0';
    return 0;
}

/* method SP target SP version, exactly one SP each. */
static int parse_request_line(struct http_str line, struct http_req *req)
{
    const char *p = line.p, *end = line.p + line.n;
    while (p < end && is_tchar((unsigned char)*p))
        p++;
    if (p == line.p || p == end || *p != ' ')
        return -400;
    req->method_s = (struct http_str){line.p, (size_t)(p - line.p)};
    req->method = method_kind(req->method_s);

    const char *t = ++p;
    while (p < end && *p != ' ') {
        if (is_ctl((unsigned char)*p))
            return -400;
        p++;
    }
    if (p == t || p == end)
        return -400;
    req->target = (struct http_str){t, (size_t)(p - t)};
    p++;
    return parse_version(p, (size_t)(end - p), req);
}

/* 1*DIGIT into a non-negative int64_t. */
static int parse_digits(struct http_str s, int64_t *out)
{
    int64_t v = 0;
    if (!s.n)
        return -400;
    for (size_t i = 0; i < s.n; i++) {
        if (s.p[i] < '0' || s.p[i] > '9')
            return -400;
        int d = s.p[i] - '0';
        if (v > (INT64_MAX - d) / 10)
            return -400;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Every value, in every Content-Length field, must be the same number. */
static int field_content_length(struct http_str v, struct http_req *req)
{
    struct http_str e;
    while (list_next(&v, &e)) {
        int64_t x;
        if (parse_digits(e, &x) < 0)
            return -400;
        if (req->content_length >= 0 && x != req->content_length)
            return -400;
        req->content_length = x;
    }
    return 0;
}

static void field_connection(struct http_str v, struct http_req *req)
{
    struct http_str e;
    while (list_next(&v, &e)) {
        if (eq_nocase(e, "close"))
            req->conn_close = 1;
        else if (eq_nocase(e, "keep-alive"))
            req->conn_keep = 1;
    }
}

/* Only the final coding matters to us, over all the fields: a body in any
 * coding that ends in chunked can be skipped by its chunks. */
static void field_transfer_encoding(struct http_str v, struct fields *f)
{
    struct http_str e;
    f->te = 1;
    while (list_next(&v, &e))
        if (e.n)
            f->te_last = e;
}

static void keep_first(struct http_str *slot, struct http_str v)
{
    if (!slot->p)
        *slot = v;
}

static int apply_field(struct http_str name, struct http_str v, struct fields *f,
                       struct http_req *req)
{
    if (eq_nocase(name, "host")) {
        f->hosts++;
        if (!http_host_valid(v.p, v.n))
            return -400;
    } else if (eq_nocase(name, "connection"))
        field_connection(v, req);
    else if (eq_nocase(name, "if-range"))
        keep_first(&req->if_range, v);
    else if (eq_nocase(name, "content-length"))
        return field_content_length(v, req);
    else if (eq_nocase(name, "transfer-encoding"))
        field_transfer_encoding(v, f);
    else if (eq_nocase(name, "if-none-match") && req->if_none_match.p) {
        if (req->n_inm_more < sizeof req->inm_more / sizeof req->inm_more[0])
            req->inm_more[req->n_inm_more++] = v;
    } else if (eq_nocase(name, "if-none-match"))
        keep_first(&req->if_none_match, v);
    else if (eq_nocase(name, "if-modified-since"))
        keep_first(&req->if_modified_since, v);
    else if (eq_nocase(name, "range"))
        keep_first(&req->range, v);
    else if (eq_nocase(name, "accept-encoding"))
        keep_first(&req->accept_encoding, v);
    else if (eq_nocase(name, "accept"))
        keep_first(&req->accept, v);
    else if (eq_nocase(name, "access-control-request-headers"))
        keep_first(&req->acr_headers, v);
    return 0;
}

/* name ":" OWS value OWS.  A line starting with whitespace (obs-fold, or
 * whitespace right after the request line) has no name and fails here. */
static int parse_field(struct http_str line, struct fields *f, struct http_req *req)
{
    size_t k = 0;
    while (k < line.n && is_tchar((unsigned char)line.p[k]))
        k++;
    if (k == 0 || k == line.n || line.p[k] != ':')
        return -400;
    struct http_str v = trim(line.p + k + 1, line.n - k - 1);
    for (size_t i = 0; i < v.n; i++)
        if (is_ctl((unsigned char)v.p[i]) && v.p[i] != '\t')
            return -400;
    return apply_field((struct http_str){line.p, k}, v, f, req);
}

/* The rules that need every field: Host count, framing. */
static int check_fields(const struct fields *f, struct http_req *req)
{
    if (f->hosts > 1 || (req->minor == 1 && f->hosts == 0))
        return -400;
    req->has_host = f->hosts == 1;
    if (f->te) {
        /* Both framings at once is how requests get smuggled. */
        if (req->content_length >= 0 || !f->te_last.p || !eq_nocase(f->te_last, "chunked"))
            return -400;
        req->chunked = 1;
    }
    return 0;
}

/* b[0..n) is a whole head, ending in its empty line. */
static int parse_head(const char *b, size_t n, struct http_req *req)
{
    struct fields f = {0};
    struct http_str line;
    size_t pos = 0;
    int rc;

    memset(req, 0, sizeof *req);
    req->content_length = -1;
    do {
        if ((rc = next_line(b, n, &pos, &line)) < 0)
            return rc;
    } while (line.n == 0);
    req->line = line;
    if ((rc = parse_request_line(line, req)) < 0)
        return rc;
    for (;;) {
        if ((rc = next_line(b, n, &pos, &line)) < 0)
            return rc;
        if (line.n == 0)
            return check_fields(&f, req);
        if ((rc = parse_field(line, &f, req)) < 0)
            return rc;
    }
}

int http_parse_head(const char *buf, size_t len, size_t max_header, size_t *scan,
                    struct http_req *req)
{
    if (max_header > INT_MAX)
        max_header = INT_MAX; /* the length is returned as an int */
    size_t lim = len < max_header ? len : max_header;
    size_t i = *scan < lim ? *scan : lim;
    const char *lf;

    /* Each LF is judged once, by bytes before it, so resuming after any
     * split (even inside a CRLF) judges it as a whole search would. */
    while (i < lim && (lf = memchr(buf + i, '\n', lim - i))) {
        i = (size_t)(lf - buf) + 1;
        if (ends_head(buf, i - 1)) {
            *scan = i;
            int rc = parse_head(buf, i, req);
            return rc < 0 ? rc : (int)i;
        }
    }
    *scan = lim;
    return len < max_header ? 0 : too_long(buf, max_header);
}

/* ---- chunked bodies -------------------------------------------------------- */

/* The low four bits of state are one of these; while in the chunk-size
 * line, the bits above count its bytes. */
enum {
    CH_SIZE0,      /* before the first hex digit of a chunk-size */
    CH_SIZE,       /* in the hex digits */
    CH_EXT,        /* after them: BWS, chunk extensions */
    CH_SIZE_LF,    /* the size line's CR was seen */
    CH_DATA,       /* size bytes of data to go */
    CH_DATA_CR,    /* the line end after the data */
    CH_DATA_LF,    /* its CR was seen */
    CH_TRAILER0,   /* at the start of a trailer line (or the final empty line) */
    CH_TRAILER,    /* inside a trailer line */
    CH_TRAILER_LF, /* a trailer line's CR was seen */
    CH_END_LF,     /* the final empty line's CR was seen */
    CH_DONE,
};

#define CH_MASK        15
#define CHUNK_LINE_MAX 4096
#define TRAILER_MAX    8192

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = lower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The chunk-size line is complete: data follows, or the trailers. */
static int size_line_done(struct http_chunked *c, uint64_t limit)
{
    if (c->size == 0) {
        c->state = CH_TRAILER0; /* size now counts trailer bytes */
        return 0;
    }
    if (c->total > limit || c->size > limit - c->total)
        return -413;
    c->state = CH_DATA;
    return 0;
}

/* What may follow the hex digits of a size line; -1 for a bad byte, or
 * the state that ch leads to (CH_DONE meaning the line is complete). */
static int size_line_end(unsigned char ch)
{
    if (ch == '\r')
        return CH_SIZE_LF;
    if (ch == '\n')
        return CH_DONE;
    return ch ? CH_EXT : -1;
}

/* The state a size-line byte leads to (CH_DONE: the line is complete), or
 * -1 for a byte that may not come here. */
static int size_line_next(struct http_chunked *c, int st, unsigned char ch)
{
    int h = hex_value(ch);
    switch (st) {
    case CH_SIZE0:
        if (h < 0)
            return -1;
        c->size = (uint64_t)h;
        return CH_SIZE;
    case CH_SIZE:
        if (h >= 0) {
            if (c->size >> 60)
                return -1; /* would overflow */
            c->size = c->size << 4 | (uint64_t)h;
            return CH_SIZE;
        }
        if (ch != ';' && !is_ows((char)ch) && ch != '\r' && ch != '\n')
            return -1; /* junk right after the digits */
        return size_line_end(ch);
    case CH_EXT:
        return size_line_end(ch);
    default: /* CH_SIZE_LF */
        return ch == '\n' ? CH_DONE : -1;
    }
}

static int size_line_byte(struct http_chunked *c, unsigned char ch, uint64_t limit)
{
    unsigned n = ((unsigned)c->state >> 4) + 1;
    if (n > CHUNK_LINE_MAX)
        return -400;
    int st = size_line_next(c, c->state & CH_MASK, ch);
    if (st < 0)
        return -400;
    if (st == CH_DONE)
        return size_line_done(c, limit);
    c->state = (int)(n << 4) | st;
    return 0;
}

/* Trailer fields are thrown away unread, only their line ends matter. */
static int trailer_byte(struct http_chunked *c, unsigned char ch)
{
    int st = c->state;
    if (++c->size > TRAILER_MAX || ch == '\0')
        return -400;
    if (st == CH_TRAILER_LF || st == CH_END_LF) {
        if (ch != '\n')
            return -400;
        c->state = st == CH_END_LF ? CH_DONE : CH_TRAILER0;
    } else if (ch == '\n') {
        c->state = st == CH_TRAILER0 ? CH_DONE : CH_TRAILER0;
    } else if (ch == '\r') {
        c->state = st == CH_TRAILER0 ? CH_END_LF : CH_TRAILER_LF;
    } else {
        c->state = CH_TRAILER;
    }
    return 0;
}

/* The CRLF (or LF) that closes a chunk's data. */
static int data_end_byte(struct http_chunked *c, unsigned char ch)
{
    if (ch == '\n')
        c->state = CH_SIZE0;
    else if (ch == '\r' && c->state == CH_DATA_CR)
        c->state = CH_DATA_LF;
    else
        return -400;
    return 0;
}

static int chunk_byte(struct http_chunked *c, unsigned char ch, uint64_t limit)
{
    int st = c->state & CH_MASK;
    if (st <= CH_SIZE_LF)
        return size_line_byte(c, ch, limit);
    if (st == CH_DATA_CR || st == CH_DATA_LF)
        return data_end_byte(c, ch);
    return trailer_byte(c, ch);
}

ssize_t http_chunked_skip(struct http_chunked *c, const char *buf, size_t len, uint64_t limit,
                          int *done)
{
    size_t i = 0;
    *done = 0;
    while (i < len && c->state != CH_DONE) {
        if (c->state == CH_DATA) {
            size_t k = len - i < c->size ? len - i : (size_t)c->size;
            i += k;
            c->size -= k;
            c->total += k;
            if (c->size == 0)
                c->state = CH_DATA_CR;
            continue;
        }
        int rc = chunk_byte(c, (unsigned char)buf[i++], limit);
        if (rc < 0)
            return rc;
    }
    *done = c->state == CH_DONE;
    return (ssize_t)i;
}

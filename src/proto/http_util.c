/* http_util.c - the parts of the HTTP server that do not touch a socket:
 * request target -> contained path, MIME types, dates, ranges, ETags and
 * escaping (see http_int.h for the contracts).
 *
 * Everything here that runs per request (path resolution, MIME lookup,
 * dates, ranges, ETags) works on caller-provided buffers and does not
 * allocate; only the MIME table (once per process) does. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "proto/http_int.h"

#ifndef SYS_openat2
#define SYS_openat2 437 /* the same number on every architecture */
#endif

/* ASCII only: header values and file names must not depend on the locale. */
static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static int hex_val(int c)
{
    if (is_digit(c))
        return c - '0';
    c = lower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int is_ows(int c)
{
    return c == ' ' || c == '\t';
}

static const char HEX_UPPER[] = "0123456789ABCDEF";
static const char HEX_LOWER[] = "0123456789abcdef";

/* ---- request target ------------------------------------------------------ */

/* The path, query and fragment of s[0..n) (which starts at the path). */
static void split_path_query(const char *s, size_t n, struct http_str *path, struct http_str *query)
{
    const char *hash = memchr(s, '#', n);
    if (hash)
        n = (size_t)(hash - s);
    const char *q = memchr(s, '?', n);
    path->p = s;
    path->n = q ? (size_t)(q - s) : n;
    /* An empty but present query ("/d?") stays non-NULL, so that a redirect
     * can reproduce the target faithfully. */
    query->p = q ? q + 1 : NULL;
    query->n = q ? n - path->n - 1 : 0;
}

/* Length of "http://" or "https://" at the start of t, else 0. */
static size_t scheme_len(const char *t, size_t n)
{
    static const char http[] = "http";
    size_t i = 0;
    for (; i < 4; i++)
        if (i >= n || lower(t[i]) != http[i])
            return 0;
    if (i < n && lower(t[i]) == 's')
        i++;
    if (n - i < 3 || memcmp(t + i, "://", 3) != 0)
        return 0;
    return i + 3;
}

int http_target_split(const char *t, size_t n, struct http_str *path, struct http_str *query)
{
    static const char root[] = "/";
    if (n > 0 && t[0] == '/') {
        split_path_query(t, n, path, query);
        return 0;
    }
    size_t i = scheme_len(t, n);
    if (i == 0)
        return -400;
    size_t auth = i;
    while (i < n && t[i] != '/' && t[i] != '?' && t[i] != '#')
        i++;
    if (i == auth) /* no host */
        return -400;
    split_path_query(t + i, n - i, path, query);
    if (path->n == 0)
        path->p = root, path->n = 1;
    return 0;
}

/* ---- path resolution ----------------------------------------------------- */

/* The state of http_path_resolve.  Segments are decoded straight into out
 * after the committed part; a segment that does not fit is only counted
 * (over), so that a later ".." can still take it back off and the length
 * limit applies to the result, not to the way there. */
struct resolver {
    char *out;
    size_t cap;  /* bytes of out usable for text (without the NUL) */
    size_t pos;  /* committed length */
    size_t over; /* segments pushed that did not fit */
    size_t len;  /* bytes in the current segment */
    int dots;    /* the current segment is all '.' so far */
    int climbed; /* a ".." went above the root */
    int pushed;  /* the last finished segment was a real one */
};

static void seg_byte(struct resolver *r, char c)
{
    size_t at = r->pos + (r->pos > 0) + r->len;
    if (r->over == 0 && at < r->cap)
        r->out[at] = c;
    r->len++;
    r->dots = r->dots && c == '.';
}

static void seg_pop(struct resolver *r)
{
    if (r->over > 0) {
        r->over--;
    } else if (r->pos == 0) {
        r->climbed = 1;
    } else {
        const char *slash = memrchr(r->out, '/', r->pos);
        r->pos = slash ? (size_t)(slash - r->out) : 0;
    }
}

static void seg_end(struct resolver *r)
{
    size_t start = r->pos + (r->pos > 0);
    r->pushed = 0;
    if (r->climbed || r->len == 0 || (r->dots && r->len == 1)) {
        /* nothing: empty and "." segments vanish */
    } else if (r->dots && r->len == 2) {
        seg_pop(r);
    } else if (r->over == 0 && start + r->len <= r->cap) {
        if (r->pos > 0)
            r->out[r->pos] = '/';
        r->pos = start + r->len;
        r->pushed = 1;
    } else {
        r->over++;
        r->pushed = 1;
    }
    r->len = 0;
    r->dots = 1;
}

/* The byte at raw[*i] decoded (advancing *i), or -400. */
static int decode_at(const char *raw, size_t n, size_t *i)
{
    unsigned char c = (unsigned char)raw[*i];
    if (c == '\0')
        return -400;
    if (c != '%') {
        (*i)++;
        return c;
    }
    if (n - *i < 3)
        return -400;
    int hi = hex_val(raw[*i + 1]), lo = hex_val(raw[*i + 2]);
    if (hi < 0 || lo < 0 || (hi | lo) == 0)
        return -400;
    *i += 3;
    return hi << 4 | lo;
}

int http_path_resolve(const char *raw, size_t n, char *out, size_t outsz, int *dir_form)
{
    if (outsz == 0)
        return -414;
    struct resolver r = {.out = out, .cap = outsz - 1, .dots = 1};
    if (r.cap > INT_MAX)
        r.cap = INT_MAX;
    for (size_t i = 0; i < n;) {
        int c = decode_at(raw, n, &i);
        if (c < 0)
            return c;
        if (c == '/')
            seg_end(&r);
        else
            seg_byte(&r, (char)c);
    }
    seg_end(&r);
    if (r.climbed)
        return -404;
    if (r.over > 0)
        return -414;
    out[r.pos] = '\0';
    *dir_form = !r.pushed || r.pos == 0;
    return (int)r.pos;
}

/* ---- containment --------------------------------------------------------- */

/* Set once openat2 has answered ENOSYS: every later open walks. */
static atomic_int no_openat2;

int http__open_walk(int rootfd, const char *rel, int flags);

/* An intermediate directory of the walk, never through a symlink. */
static int walk_dir(int dir, const char *name)
{
    int fd = openat(dir, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    int rc = fstat(fd, &st) < 0 ? -errno : 0;
    if (rc == 0 && !S_ISDIR(st.st_mode))
        rc = S_ISLNK(st.st_mode) ? -ELOOP : -ENOTDIR;
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

static int walk_last(int dir, const char *name, int flags)
{
    struct stat st;
    int fd = openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC);
    /* With O_DIRECTORY, a symlink fails as "not a directory": say why. */
    if (fd < 0 && errno == ENOTDIR && fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISLNK(st.st_mode))
        return -ELOOP;
    if (fd < 0)
        return -errno;
    /* O_PATH | O_NOFOLLOW opens a symlink itself instead of failing. */
    if ((flags & O_PATH) && (fstat(fd, &st) < 0 || S_ISLNK(st.st_mode))) {
        close(fd);
        return -ELOOP;
    }
    return fd;
}

/* The fallback for kernels without openat2 (< 5.6): one component at a
 * time, refusing every symlink, so nothing can lead outside rootfd.
 * Not static only so that the tests can run it on a kernel that has
 * openat2. */
int http__open_walk(int rootfd, const char *rel, int flags)
{
    if (rel[0] == '/')
        return -EXDEV;
    char name[NAME_MAX + 1];
    int cur = rootfd, fd;
    for (const char *p = rel;;) {
        size_t len = strcspn(p, "/");
        const char *next = p + len + strspn(p + len, "/");
        if (len > NAME_MAX) {
            fd = -ENAMETOOLONG;
            break;
        }
        memcpy(name, p, len);
        name[len] = '\0';
        if (strcmp(name, "..") == 0) {
            fd = -EXDEV;
            break;
        }
        if (*next == '\0') {
            fd = walk_last(cur, len ? name : ".", flags);
            break;
        }
        fd = walk_dir(cur, name);
        if (fd < 0)
            break;
        if (cur != rootfd)
            close(cur);
        cur = fd;
        p = next;
    }
    if (cur != rootfd)
        close(cur);
    return fd;
}

int http_open_beneath(int rootfd, const char *rel, int flags)
{
    if (atomic_load_explicit(&no_openat2, memory_order_relaxed))
        return http__open_walk(rootfd, rel, flags);
    struct open_how how = {
        .flags = (unsigned)(flags | O_CLOEXEC),
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
    };
    /* EAGAIN: a rename raced with the lookup and the kernel could not
     * prove containment; asking again is the documented answer. */
    for (int tries = 0;; tries++) {
        long fd = syscall(SYS_openat2, rootfd, *rel ? rel : ".", &how, sizeof how);
        if (fd >= 0)
            return (int)fd;
        if (errno == ENOSYS) {
            atomic_store_explicit(&no_openat2, 1, memory_order_relaxed);
            return http__open_walk(rootfd, rel, flags);
        }
        if ((errno != EAGAIN && errno != EINTR) || tries >= 16)
            return -errno;
    }
}

/* ---- dates --------------------------------------------------------------- */

static const char WDAYS[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const WDAYS_LONG[7] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                          "Thursday", "Friday", "Saturday"};
static const char MONTHS[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
/* 9999-12-31 23:59:59: the last time that fits four digits of year. */
#define DATE_MAX ((time_t)253402300799)

static char *put_num(char *p, int v, int width)
{
    for (int i = width - 1; i >= 0; i--, v /= 10)
        p[i] = (char)('0' + v % 10);
    return p + width;
}

static char *put_str(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

void http_date(time_t t, char out[HTTP_DATE_LEN + 1])
{
    struct tm tm;
    /* Clamped: the format has room for years 1970..9999 only. */
    t = t < 0 ? 0 : t > DATE_MAX ? DATE_MAX : t;
    gmtime_r(&t, &tm);
    char *p = put_str(out, WDAYS[tm.tm_wday], 3);
    p = put_str(p, ", ", 2);
    p = put_num(p, tm.tm_mday, 2);
    *p++ = ' ';
    p = put_str(p, MONTHS[tm.tm_mon], 3);
    *p++ = ' ';
    p = put_num(p, tm.tm_year + 1900, 4);
    *p++ = ' ';
    p = put_num(p, tm.tm_hour, 2);
    *p++ = ':';
    p = put_num(p, tm.tm_min, 2);
    *p++ = ':';
    p = put_num(p, tm.tm_sec, 2);
    p = put_str(p, " GMT", 4);
    *p = '\0';
}

/* Exactly width digits at s, or -1. */
static int get_num(const char *s, int width)
{
    int v = 0;
    for (int i = 0; i < width; i++) {
        if (!is_digit(s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static int find_name(const char (*names)[4], int count, const char *s)
{
    for (int i = 0; i < count; i++)
        if (memcmp(names[i], s, 3) == 0)
            return i;
    return -1;
}

/* "HH:MM:SS" into tm; 0 or -1. */
static int get_time(const char *s, struct tm *tm)
{
    if (s[2] != ':' || s[5] != ':')
        return -1;
    tm->tm_hour = get_num(s, 2);
    tm->tm_min = get_num(s + 3, 2);
    tm->tm_sec = get_num(s + 6, 2);
    /* 60: a leap second, which the grammar allows. */
    return tm->tm_hour < 0 || tm->tm_hour > 23 || tm->tm_min < 0 || tm->tm_min > 59 ||
                   tm->tm_sec < 0 || tm->tm_sec > 60
               ? -1
               : 0;
}

static int days_in_month(int mon, int year)
{
    static const unsigned char days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return days[mon] + (mon == 1 && leap);
}

/* "Sun, 06 Nov 1994 08:49:37 GMT" */
static int parse_imf(const char *s, struct tm *tm)
{
    if (find_name(WDAYS, 7, s) < 0 || memcmp(s + 3, ", ", 2) != 0 || s[7] != ' ' || s[11] != ' ' ||
        s[16] != ' ' || memcmp(s + 25, " GMT", 4) != 0)
        return -1;
    tm->tm_mday = get_num(s + 5, 2);
    tm->tm_mon = find_name(MONTHS, 12, s + 8);
    tm->tm_year = get_num(s + 12, 4);
    return get_time(s + 17, tm);
}

/* "Sun Nov  6 08:49:37 1994" */
static int parse_asctime(const char *s, struct tm *tm)
{
    if (find_name(WDAYS, 7, s) < 0 || s[3] != ' ' || s[7] != ' ' || s[10] != ' ' || s[19] != ' ')
        return -1;
    tm->tm_mon = find_name(MONTHS, 12, s + 4);
    tm->tm_mday = s[8] == ' ' ? get_num(s + 9, 1) : get_num(s + 8, 2);
    tm->tm_year = get_num(s + 20, 4);
    return get_time(s + 11, tm);
}

/* RFC 9110 5.6.7: a two-digit year more than 50 years ahead is in the
 * past century. */
static int full_year(int yy)
{
    time_t now = time(NULL);
    struct tm cur;
    gmtime_r(&now, &cur);
    int this_year = cur.tm_year + 1900;
    int y = this_year - this_year % 100 + yy;
    return y > this_year + 50 ? y - 100 : y;
}

/* "Sunday, 06-Nov-94 08:49:37 GMT" */
static int parse_rfc850(const char *s, size_t n, struct tm *tm)
{
    const char *comma = memchr(s, ',', n);
    if (!comma)
        return -1;
    size_t w = (size_t)(comma - s), day = 0;
    while (day < 7 && (strlen(WDAYS_LONG[day]) != w || memcmp(WDAYS_LONG[day], s, w) != 0))
        day++;
    s = comma + 1; /* " 06-Nov-94 08:49:37 GMT" */
    if (day == 7 || n - w != 24 || s[0] != ' ' || s[3] != '-' || s[7] != '-' || s[10] != ' ' ||
        memcmp(s + 19, " GMT", 4) != 0)
        return -1;
    tm->tm_mday = get_num(s + 1, 2);
    tm->tm_mon = find_name(MONTHS, 12, s + 4);
    int yy = get_num(s + 8, 2);
    tm->tm_year = yy < 0 ? -1 : full_year(yy);
    return get_time(s + 11, tm);
}

int http_date_parse(const char *s, size_t n, time_t *out)
{
    struct tm tm = {0};
    int rc = n == 29   ? parse_imf(s, &tm)
             : n == 24 ? parse_asctime(s, &tm)
                       : parse_rfc850(s, n, &tm);
    if (rc < 0 || tm.tm_mon < 0 || tm.tm_year < 0 || tm.tm_mday < 1 ||
        tm.tm_mday > days_in_month(tm.tm_mon, tm.tm_year))
        return -EINVAL;
    tm.tm_year -= 1900;
    *out = timegm(&tm);
    return 0;
}

static size_t skip_ows(const char *s, size_t n, size_t i)
{
    while (i < n && is_ows(s[i]))
        i++;
    return i;
}

/* ---- ETags --------------------------------------------------------------- */

static char *put_hex(char *p, uint64_t v)
{
    char tmp[16];
    int k = 0;
    do {
        tmp[k++] = HEX_LOWER[v & 15];
        v >>= 4;
    } while (v);
    while (k > 0)
        *p++ = tmp[--k];
    return p;
}

size_t http_etag(const struct stat *st, char *out)
{
    uint64_t ns = (uint64_t)st->st_mtim.tv_sec * 1000000000u + (uint64_t)st->st_mtim.tv_nsec;
    char *p = out;
    *p++ = '"';
    p = put_hex(p, (uint64_t)st->st_ino);
    *p++ = '-';
    p = put_hex(p, (uint64_t)st->st_size);
    *p++ = '-';
    p = put_hex(p, ns);
    *p++ = '"';
    *p = '\0';
    return (size_t)(p - out);
}

int http_if_range(const char *v, size_t n, const char *etag, size_t etag_len, time_t mtime,
                  time_t now)
{
    /* A DQUOTE among the first three bytes tells an entity-tag from a
     * date; "W/" makes it weak, and a weak tag never matches strongly. */
    if (memchr(v, '"', n < 3 ? n : 3))
        return n == etag_len && n >= 2 && v[0] == '"' && memcmp(v, etag, n) == 0;
    time_t t;
    return http_date_parse(v, n, &t) == 0 && t == mtime && mtime < now;
}

/* The opaque-tag of an entity-tag (quotes included), W/ skipped. */
static struct http_str opaque(const char *s, size_t n)
{
    if (n >= 2 && s[0] == 'W' && s[1] == '/')
        s += 2, n -= 2;
    return (struct http_str){s, n};
}

/* The list element at s[*i...]: advances *i past it and its comma; 1 when
 * it matches tag. */
static int etag_element(const char *s, size_t n, size_t *i, struct http_str tag)
{
    size_t start = *i, end;
    if (n - start >= 2 && s[start] == 'W' && s[start + 1] == '/')
        start += 2;
    if (start < n && s[start] == '"') {
        /* etagc includes ',': the element ends at the closing quote. */
        const char *q = memchr(s + start + 1, '"', n - start - 1);
        end = q ? (size_t)(q - s) + 1 : n;
    } else {
        end = start;
        while (end < n && s[end] != ',' && !is_ows(s[end]))
            end++;
    }
    int match = (end - start == 1 && s[start] == '*') ||
                (end - start == tag.n && tag.n >= 2 && s[start] == '"' && s[end - 1] == '"' &&
                 memcmp(s + start, tag.p, tag.n) == 0);
    /* Whatever follows up to the next comma is junk to skip. */
    const char *comma = end < n ? memchr(s + end, ',', n - end) : NULL;
    *i = comma ? (size_t)(comma - s) + 1 : n;
    return match;
}

int http_etag_match(const char *list, size_t n, const char *etag, size_t etag_len)
{
    struct http_str tag = opaque(etag, etag_len);
    for (size_t i = 0; i < n;) {
        i = skip_ows(list, n, i);
        if (i < n && list[i] == ',') {
            i++;
            continue;
        }
        if (i < n && etag_element(list, n, &i, tag))
            return 1;
    }
    return 0;
}

/* ---- escaping ------------------------------------------------------------ */

/* Append n bytes of s at *len in out[0..outsz), keeping room for a NUL. */
static void emit(char *out, size_t outsz, size_t *len, const char *s, size_t n)
{
    if (*len + 1 < outsz) {
        size_t room = outsz - 1 - *len;
        memcpy(out + *len, s, n < room ? n : room);
    }
    *len += n;
}

static void terminate(char *out, size_t outsz, size_t len)
{
    if (outsz > 0)
        out[len < outsz ? len : outsz - 1] = '\0';
}

static const char *html_entity(char c)
{
    switch (c) {
    case '&':
        return "&amp;";
    case '<':
        return "&lt;";
    case '>':
        return "&gt;";
    case '"':
        return "&quot;";
    case '\'':
        return "&#39;";
    default:
        return NULL;
    }
}

size_t http_html_escape(const char *s, size_t n, char *out, size_t outsz)
{
    size_t len = 0, run = 0;
    for (size_t i = 0; i < n; i++) {
        const char *ent = html_entity(s[i]);
        if (!ent)
            continue;
        emit(out, outsz, &len, s + run, i - run);
        emit(out, outsz, &len, ent, strlen(ent));
        run = i + 1;
    }
    emit(out, outsz, &len, s + run, n - run);
    terminate(out, outsz, len);
    return len;
}

static int unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

size_t http_pct_encode(const char *s, size_t n, int keep_slash, char *out, size_t outsz)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (unreserved(c) || (keep_slash && c == '/')) {
            emit(out, outsz, &len, s + i, 1);
        } else {
            char esc[3] = {'%', HEX_UPPER[c >> 4], HEX_UPPER[c & 15]};
            emit(out, outsz, &len, esc, 3);
        }
    }
    terminate(out, outsz, len);
    return len;
}

/* Bytes that stand for themselves in a path segment (pchar but '%') or,
 * with '/' and '?', in a query: unreserved, sub-delims, ':' and '@'. */
static int is_pchar(unsigned char c)
{
    static const uint32_t map[4] = {
        0x00000000u, /* controls */
        0x2fff7fd2u, /* ! $ & ' ( ) * + , - . 0-9 : ; = */
        0x87ffffffu, /* @ A-Z _ */
        0x47fffffeu, /* a-z ~ */
    };
    return c < 128 && (map[c >> 5] >> (c & 31) & 1u);
}

static void emit_pct(char *out, size_t outsz, size_t *len, unsigned char c)
{
    char esc[3] = {'%', HEX_UPPER[c >> 4], HEX_UPPER[c & 15]};
    emit(out, outsz, len, esc, 3);
}

size_t http_dir_location(const char *rel, const struct http_str *query, char *out, size_t outsz)
{
    size_t len = 0;
    /* rel has no empty segment, so this '/' is never followed by another. */
    emit(out, outsz, &len, "/", 1);
    for (const char *p = rel; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (is_pchar(c) || c == '/')
            emit(out, outsz, &len, p, 1);
        else
            emit_pct(out, outsz, &len, c);
    }
    emit(out, outsz, &len, "/", 1);
    if (query->p) {
        emit(out, outsz, &len, "?", 1);
        for (size_t i = 0; i < query->n; i++) {
            unsigned char c = (unsigned char)query->p[i];
            int escape = c == '%' && query->n - i >= 3 && hex_val(query->p[i + 1]) >= 0 &&
                         hex_val(query->p[i + 2]) >= 0;
            if (is_pchar(c) || c == '/' || c == '?' || escape)
                emit(out, outsz, &len, query->p + i, 1);
            else
                emit_pct(out, outsz, &len, c);
        }
    }
    terminate(out, outsz, len);
    return len;
}

/* Bytes the access log writes as they are: printable ASCII but '"' and
 * backslash.  A 256-bit table: the log escapes every byte of every line. */
static const uint32_t log_plain[8] = {0x00000000u, 0xfffffffbu, 0xefffffffu, 0x7fffffffu};

size_t http_log_escape(const char *s, size_t n, char *out)
{
    char *o = out;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (log_plain[c >> 5] >> (c & 31) & 1u)
            continue;
        memcpy(o, s + run, i - run);
        o += i - run;
        *o++ = '\\';
        *o++ = 'x';
        *o++ = HEX_UPPER[c >> 4];
        *o++ = HEX_UPPER[c & 15];
        run = i + 1;
    }
    memcpy(o, s + run, n - run);
    return (size_t)(o - out) + n - run;
}

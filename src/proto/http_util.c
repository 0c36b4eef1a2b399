/* http_util.c - the parts of the HTTP server that do not touch a socket:
 * request target -> contained path, MIME types, dates, ranges, ETags and
 * directory listings (see http_int.h for the contracts).
 *
 * Everything here that runs per request (path resolution, MIME lookup,
 * dates, ranges, ETags) works on caller-provided buffers and does not
 * allocate; only the MIME table (once per process) and directory
 * listings do. */
#include <dirent.h>
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

/* ---- MIME types ---------------------------------------------------------- */

#define MIME_DEFAULT  "application/octet-stream"
#define MIME_MAX_FILE (16u << 20)

struct mime_slot {
    const char *ext; /* lowercase, NUL-terminated; NULL: free */
    const char *type;
    uint32_t hash, len;
};

/* Written once under pthread_once, read-only afterwards. */
static struct {
    struct mime_slot *slots; /* NULL: no table, everything is the default */
    size_t mask;
    size_t max_ext;
} mime;
static pthread_once_t mime_once = PTHREAD_ONCE_INIT;
static const char *mime_file = "/etc/mime.types";
static int mime_rc;
static atomic_int mime_loaded;

static uint32_t ext_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint32_t)lower((unsigned char)s[i])) * 16777619u;
    return h;
}

/* A later line wins, as with Python's mimetypes and Apache. */
static void mime_insert(const char *ext, size_t len, const char *type)
{
    uint32_t h = ext_hash(ext, len);
    size_t i = h & mime.mask;
    while (mime.slots[i].ext && (mime.slots[i].hash != h || strcmp(mime.slots[i].ext, ext) != 0))
        i = (i + 1) & mime.mask;
    mime.slots[i] = (struct mime_slot){ext, type, h, (uint32_t)len};
    if (len > mime.max_ext)
        mime.max_ext = len;
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* One line s[0..n) of mime.types: count its extensions, and when insert is
 * set also NUL-terminate and lowercase them in place and add them. */
static size_t mime_line(char *s, size_t n, int insert)
{
    const char *hash = memchr(s, '#', n);
    if (hash)
        n = (size_t)(hash - s);
    const char *type = NULL;
    size_t count = 0;
    for (size_t i = 0, k; i < n; i = k) {
        while (i < n && is_blank(s[i]))
            i++;
        for (k = i; k < n && !is_blank(s[k]);)
            k++;
        size_t j = i + (i < k && s[i] == '.'); /* tolerate ".ext" */
        if (j == k)
            continue;
        if (!type) {
            if (!memchr(s + j, '/', k - j))
                return 0; /* not a "type/subtype" line */
            type = s + j;
        } else {
            count++;
        }
        if (!insert)
            continue;
        s[k] = '\0'; /* over a blank, the '#', the '\n' or the arena's spare byte */
        if (type != s + j) {
            for (size_t m = j; m < k; m++)
                s[m] = (char)lower((unsigned char)s[m]);
            mime_insert(s + j, k - j, type);
        }
        k++;
    }
    return count;
}

static size_t mime_scan(char *s, size_t n, int insert)
{
    size_t count = 0;
    for (size_t i = 0; i < n;) {
        const char *nl = memchr(s + i, '\n', n - i);
        size_t end = nl ? (size_t)(nl - s) : n;
        count += mime_line(s + i, end - i, insert);
        i = end + 1;
    }
    return count;
}

static int read_file(const char *file, char **text, size_t *len)
{
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    int rc = fstat(fd, &st) < 0 ? -errno : 0;
    if (rc == 0 && (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > MIME_MAX_FILE))
        rc = -EINVAL;
    char *buf = rc == 0 ? malloc((size_t)st.st_size + 1) : NULL;
    if (rc == 0 && !buf)
        rc = -ENOMEM;
    size_t got = 0;
    while (rc == 0 && got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno != EINTR)
            rc = -errno;
        else if (r == 0)
            break; /* shrank under us: parse what is there */
        else if (r > 0)
            got += (size_t)r;
    }
    close(fd);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    *text = buf;
    *len = got;
    return 0;
}

/* One arena: the slot array, then the file's text, parsed in place. */
static int mime_build(char *text, size_t len)
{
    size_t count = mime_scan(text, len, 0), cap = 16;
    while (cap < count * 2)
        cap *= 2;
    size_t slots_sz = cap * sizeof(struct mime_slot);
    char *arena = calloc(1, slots_sz + len + 1);
    if (!arena)
        return -ENOMEM;
    char *copy = arena + slots_sz;
    memcpy(copy, text, len);
    mime.slots = (struct mime_slot *)(void *)arena;
    mime.mask = cap - 1;
    mime_scan(copy, len, 1);
    return 0;
}

static void mime_init(void)
{
    char *text = NULL;
    size_t len = 0;
    mime_rc = read_file(mime_file, &text, &len);
    if (mime_rc == 0) {
        mime_rc = mime_build(text, len);
        free(text);
    }
    atomic_store(&mime_loaded, 1);
}

int http_mime_load(const char *file)
{
    if (atomic_load(&mime_loaded))
        return -EALREADY;
    if (file)
        mime_file = file;
    pthread_once(&mime_once, mime_init);
    return mime_rc;
}

static const char *mime_find(const char *ext, size_t len)
{
    uint32_t h = ext_hash(ext, len);
    for (size_t i = h & mime.mask; mime.slots[i].ext; i = (i + 1) & mime.mask) {
        const struct mime_slot *s = &mime.slots[i];
        if (s->hash != h || s->len != len)
            continue;
        size_t k = 0;
        while (k < len && s->ext[k] == lower((unsigned char)ext[k]))
            k++;
        if (k == len)
            return s->type;
    }
    return NULL;
}

const char *http_mime_type(const char *name, size_t len)
{
    pthread_once(&mime_once, mime_init);
    const char *slash = memrchr(name, '/', len);
    const char *base = slash ? slash + 1 : name;
    size_t blen = len - (size_t)(base - name);
    const char *dot = memrchr(base, '.', blen);
    /* No extension, a trailing dot, or a dot file such as ".profile". */
    if (!mime.slots || !dot || dot == base)
        return MIME_DEFAULT;
    size_t elen = blen - (size_t)(dot + 1 - base);
    const char *type = elen && elen <= mime.max_ext ? mime_find(dot + 1, elen) : NULL;
    return type ? type : MIME_DEFAULT;
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

/* ---- ranges -------------------------------------------------------------- */

static size_t skip_ows(const char *s, size_t n, size_t i)
{
    while (i < n && is_ows(s[i]))
        i++;
    return i;
}

/* Decimal digits at s[*i...] into *v; 0, or -1 when there are none or they
 * overflow. */
static int get_u64(const char *s, size_t n, size_t *i, uint64_t *v)
{
    size_t start = *i;
    *v = 0;
    for (; *i < n && is_digit(s[*i]); (*i)++) {
        unsigned d = (unsigned)(s[*i] - '0');
        if (*v > (UINT64_MAX - d) / 10)
            return -1;
        *v = *v * 10 + d;
    }
    return *i > start ? 0 : -1;
}

/* The byte-range-spec or suffix-range after "bytes=": 1, -416, or 0. */
static int range_spec(const char *s, size_t n, uint64_t size, uint64_t *first, uint64_t *last)
{
    size_t i = 0;
    uint64_t a = 0, b = UINT64_MAX;
    int suffix = i < n && s[i] == '-';
    if (!suffix && get_u64(s, n, &i, &a) < 0)
        return 0;
    i = skip_ows(s, n, i);
    if (i >= n || s[i] != '-')
        return 0;
    i = skip_ows(s, n, i + 1);
    if ((i < n || suffix) && get_u64(s, n, &i, &b) < 0)
        return 0;
    if (skip_ows(s, n, i) != n || a > b)
        return 0;
    if (suffix) {
        if (b == 0 || size == 0)
            return -416;
        a = b > size ? 0 : size - b;
        b = size - 1;
    }
    if (a >= size)
        return -416;
    *first = a;
    *last = b >= size ? size - 1 : b;
    return 1;
}

int http_range(const char *s, size_t n, uint64_t size, uint64_t *first, uint64_t *last)
{
    static const char unit[] = "bytes";
    size_t i = skip_ows(s, n, 0);
    for (size_t k = 0; k < 5; k++, i++)
        if (i >= n || lower(s[i]) != unit[k])
            return 0;
    i = skip_ows(s, n, i);
    if (i >= n || s[i] != '=' || memchr(s, ',', n))
        return 0;
    i = skip_ows(s, n, i + 1);
    return range_spec(s + i, n - i, size, first, last);
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

/* ---- directory listings -------------------------------------------------- */

struct buf {
    char *p;
    size_t len, cap;
    int err;
};

/* Room for n more bytes plus a NUL; 0 or -1 (b->err set). */
static int buf_reserve(struct buf *b, size_t n)
{
    if (b->err)
        return -1;
    if (b->len + n + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->err = -ENOMEM;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void buf_add(struct buf *b, const char *s)
{
    size_t n = strlen(s);
    if (buf_reserve(b, n) == 0) {
        memcpy(b->p + b->len, s, n);
        b->len += n;
    }
}

static void buf_escape(struct buf *b, const char *s, size_t n)
{
    size_t need = http_html_escape(s, n, NULL, 0);
    if (buf_reserve(b, need) == 0)
        b->len += http_html_escape(s, n, b->p + b->len, need + 1);
}

static void buf_encode(struct buf *b, const char *s, size_t n)
{
    size_t need = http_pct_encode(s, n, 0, NULL, 0);
    if (buf_reserve(b, need) == 0)
        b->len += http_pct_encode(s, n, 0, b->p + b->len, need + 1);
}

struct entry {
    size_t off, len; /* in the name arena while reading */
    const char *name;
    int dir;
};

struct listing {
    struct buf names; /* NUL-separated */
    struct entry *ents;
    size_t count, cap;
};

static int is_dir_entry(int dfd, const struct dirent *d)
{
    struct stat st;
    if (d->d_type != DT_UNKNOWN && d->d_type != DT_LNK)
        return d->d_type == DT_DIR;
    /* Follows symlinks: a link to a directory is listed as one.  A broken
     * link is just a name. */
    return fstatat(dfd, d->d_name, &st, 0) == 0 && S_ISDIR(st.st_mode);
}

static int listing_add(struct listing *l, int dfd, const struct dirent *d)
{
    if (l->count == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct entry *e = realloc(l->ents, cap * sizeof *e);
        if (!e)
            return -ENOMEM;
        l->ents = e;
        l->cap = cap;
    }
    size_t len = strlen(d->d_name);
    if (buf_reserve(&l->names, len + 1) < 0)
        return l->names.err;
    memcpy(l->names.p + l->names.len, d->d_name, len + 1);
    l->ents[l->count++] = (struct entry){l->names.len, len, NULL, is_dir_entry(dfd, d)};
    l->names.len += len + 1;
    return 0;
}

static int listing_read(struct listing *l, int dirfd)
{
    /* A description of our own: readdir must not move (or depend on) the
     * caller's offset, and closedir must not close the caller's fd. */
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    DIR *dir = fdopendir(fd);
    if (!dir) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    int rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *d = readdir(dir);
        if (!d) {
            rc = errno ? -errno : 0;
            break;
        }
        if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
            continue;
        if ((rc = listing_add(l, fd, d)) < 0)
            break;
    }
    closedir(dir);
    return rc;
}

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct entry *)a)->name, ((const struct entry *)b)->name);
}

static void listing_html(struct buf *b, const struct listing *l, const char *display)
{
    buf_add(b, "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n"
               "<title>Directory listing for ");
    buf_escape(b, display, strlen(display));
    buf_add(b, "</title>\n</head>\n<body>\n<h1>Directory listing for ");
    buf_escape(b, display, strlen(display));
    buf_add(b, "</h1>\n<hr>\n<ul>\n");
    for (size_t i = 0; i < l->count; i++) {
        const struct entry *e = &l->ents[i];
        const char *slash = e->dir ? "/" : "";
        buf_add(b, "<li><a href=\"");
        buf_encode(b, e->name, e->len);
        buf_add(b, slash);
        buf_add(b, "\">");
        buf_escape(b, e->name, e->len);
        buf_add(b, slash);
        buf_add(b, "</a></li>\n");
    }
    buf_add(b, "</ul>\n<hr>\n</body>\n</html>\n");
}

int http_dir_listing(int dirfd, const char *display, char **body, size_t *len)
{
    struct listing l = {0};
    struct buf page = {0};
    int rc = listing_read(&l, dirfd);
    if (rc == 0) {
        for (size_t i = 0; i < l.count; i++)
            l.ents[i].name = l.names.p + l.ents[i].off;
        if (l.count > 1)
            qsort(l.ents, l.count, sizeof *l.ents, entry_cmp);
        listing_html(&page, &l, display);
        rc = page.err;
    }
    free(l.ents);
    free(l.names.p);
    if (rc < 0) {
        free(page.p);
        return rc;
    }
    page.p[page.len] = '\0';
    *body = page.p;
    *len = page.len;
    return 0;
}

/* http_mime.c - Content-Type by file extension, from /etc/mime.types:
 * read once per process (pthread_once) into an open-addressing table that
 * is read-only afterwards, so lookups from any thread take no lock. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proto/http_int.h"

/* ASCII only: file names must not depend on the locale. */
static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
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

const char *http_mime_lookup(const char *name, size_t len)
{
    pthread_once(&mime_once, mime_init);
    const char *slash = memrchr(name, '/', len);
    const char *base = slash ? slash + 1 : name;
    size_t blen = len - (size_t)(base - name);
    const char *dot = memrchr(base, '.', blen);
    /* No extension, a trailing dot, or a dot file such as ".profile". */
    if (!mime.slots || !dot || dot == base)
        return NULL;
    size_t elen = blen - (size_t)(dot + 1 - base);
    return elen && elen <= mime.max_ext ? mime_find(dot + 1, elen) : NULL;
}

const char *http_mime_type(const char *name, size_t len)
{
    const char *type = http_mime_lookup(name, len);
    return type ? type : MIME_DEFAULT;
}

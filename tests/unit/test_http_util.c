/* test_http_util.c - the socket-free half of the HTTP server: targets,
 * path resolution and containment, MIME types, dates, ranges, ETags,
 * directory listings and escaping (src/proto/http_util.c).  Nothing here
 * uses the loop; the tests run once. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ioplex/common.h"
#include "ioplex/proto.h"
#include "proto/http_int.h"
#include "runner.h"

/* The fallback of http_open_beneath for kernels without openat2; not in
 * the header because only the tests call it directly. */
int http__open_walk(int rootfd, const char *rel, int flags);

/* ---- helpers ------------------------------------------------------------- */

static void temp_dir(char *dir, size_t len)
{
    snprintf(dir, len, "/tmp/ioplex-http-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void rm_tree(const char *dir)
{
    CHECK(nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS) == 0);
}

static void write_file(int dirfd, const char *name, const char *text)
{
    int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        iop_test_fail(__FILE__, __LINE__, "create %s: %s", name, strerror(errno));
    size_t n = strlen(text);
    CHECK(write(fd, text, n) == (ssize_t)n);
    close(fd);
}

static void check_str(int line, const char *what, const char *got, const char *want)
{
    if (strcmp(got, want) != 0)
        iop_test_fail(__FILE__, line, "%s: got '%s', want '%s'", what, got, want);
}

/* ---- http_target_split --------------------------------------------------- */

struct split_case {
    const char *target;
    int rc;
    const char *path, *query; /* query NULL: absent */
};

static const struct split_case splits[] = {
    {"/", 0, "/", NULL},
    {"/a/b?x=1&y", 0, "/a/b", "x=1&y"},
    {"/a?", 0, "/a", ""},
    {"/a#frag", 0, "/a", NULL},
    {"/a?q#frag?x", 0, "/a", "q"},
    {"/a#f?notquery", 0, "/a", NULL},
    {"//double", 0, "//double", NULL},
    {"http://example.com/p/q?z", 0, "/p/q", "z"},
    {"HTTPS://Example.com:8443", 0, "/", NULL},
    {"hTtP://h?q", 0, "/", "q"},
    {"http://h#f", 0, "/", NULL},
    {"http://user@h:1/x", 0, "/x", NULL},
    {"*", -400, NULL, NULL},
    {"", -400, NULL, NULL},
    {"foo", -400, NULL, NULL},
    {"foo/bar", -400, NULL, NULL},
    {"http://", -400, NULL, NULL},
    {"http:///p", -400, NULL, NULL},
    {"http:/h/p", -400, NULL, NULL},
    {"ftp://h/p", -400, NULL, NULL},
    {"httpx://h/p", -400, NULL, NULL},
    {"http", -400, NULL, NULL},
    {"?q", -400, NULL, NULL},
};

IOP_TEST(target_split_forms, be)
{
    (void)be;
    for (size_t i = 0; i < sizeof splits / sizeof splits[0]; i++) {
        const struct split_case *c = &splits[i];
        struct http_str path = {"junk", 4}, query = {"junk", 4};
        int rc = http_target_split(c->target, strlen(c->target), &path, &query);
        if (rc != c->rc)
            iop_test_fail(__FILE__, __LINE__, "'%s': rc %d, want %d", c->target, rc, c->rc);
        if (rc < 0)
            continue;
        if (path.n != strlen(c->path) || memcmp(path.p, c->path, path.n) != 0)
            iop_test_fail(__FILE__, __LINE__, "'%s': path '%.*s', want '%s'", c->target,
                          (int)path.n, path.p, c->path);
        if (!c->query ? query.p != NULL || query.n != 0
                      : !query.p || query.n != strlen(c->query) ||
                            memcmp(query.p, c->query, query.n) != 0)
            iop_test_fail(__FILE__, __LINE__, "'%s': query '%.*s' (%s), want '%s'", c->target,
                          (int)query.n, query.p ? query.p : "", query.p ? "present" : "absent",
                          c->query ? c->query : "(absent)");
    }
}

/* ---- http_path_resolve --------------------------------------------------- */

struct resolve_case {
    const char *raw;
    int rc; /* the length of want, or a negative status */
    const char *want;
    int dir_form;
};

#define OK(raw, want, dir)                                                                         \
    {                                                                                              \
        raw, (int)sizeof(want) - 1, want, dir                                                      \
    }
#define BAD(raw, rc)                                                                               \
    {                                                                                              \
        raw, rc, NULL, 0                                                                           \
    }

static const struct resolve_case resolves[] = {
    OK("/", "", 1),
    OK("", "", 1),
    OK("/index.html", "index.html", 0),
    OK("/a/b/c", "a/b/c", 0),
    OK("/a/b/c/", "a/b/c", 1),
    OK("/a/./b//c/", "a/b/c", 1),
    OK("//a///b", "a/b", 0),
    OK("/a/..", "", 1),
    OK("/a/../", "", 1),
    OK("/a/b/..", "a", 1),
    OK("/a/.", "a", 1),
    OK("/a/b/../c", "a/c", 0),
    OK("/a/b/../../c", "c", 0),
    OK("/./././", "", 1),
    /* Trailing and inner dots that are not dot segments are names. */
    OK("/a/...", "a/...", 0),
    OK("/a../b..", "a../b..", 0),
    OK("/.a/..b/.../c.", ".a/..b/.../c.", 0),
    OK("/ab/.%2e.", "ab/...", 0),
    /* Decoding comes first: %2e is '.', %2f is '/'. */
    OK("/a%2fb", "a/b", 0),
    OK("/a%2Fb%2f", "a/b", 1),
    OK("/a/b/%2e%2e", "a", 1),
    OK("/a/b/%2E%2e/c", "a/c", 0),
    OK("/a/%2e/b", "a/b", 0),
    OK("/a/b%2f..%2f..%2fc", "c", 0),
    OK("/a/b/..%2f..", "", 1),
    OK("/%41%62%63", "Abc", 0),
    OK("/sp%20ace/%c3%a9", "sp ace/\xc3\xa9", 0),
    OK("/a+b", "a+b", 0),
    OK("/a\\..\\b", "a\\..\\b", 0),
    OK("/q%3fx%23y", "q?x#y", 0),
    /* Climbing above the root. */
    BAD("/..", -404),
    BAD("/../", -404),
    BAD("/../etc/passwd", -404),
    BAD("/a/../..", -404),
    BAD("/a/../../b", -404),
    BAD("/%2e%2e", -404),
    BAD("/%2E%2e/x", -404),
    BAD("/%2e./x", -404),
    BAD("/.%2E/x", -404),
    BAD("/%2e%2e%2fetc%2fpasswd", -404),
    BAD("/a%2f..%2f..%2fetc", -404),
    BAD("/..%2f..", -404),
    BAD("/a/b/../../../c", -404),
    /* Bad escapes, NULs. */
    BAD("/%", -400),
    BAD("/a%", -400),
    BAD("/%1", -400),
    BAD("/%g1", -400),
    BAD("/%1g", -400),
    BAD("/% 1", -400),
    BAD("/%%41", -400),
    BAD("/%00", -400),
    BAD("/a%00b", -400),
    BAD("/%2", -400),
    /* A bad escape wins over climbing. */
    BAD("/../%zz", -400),
};

static void check_resolve(const struct resolve_case *c)
{
    char out[256];
    int dir = -1;
    memset(out, 'X', sizeof out);
    int rc = http_path_resolve(c->raw, strlen(c->raw), out, sizeof out, &dir);
    if (rc != c->rc)
        iop_test_fail(__FILE__, __LINE__, "'%s': rc %d, want %d", c->raw, rc, c->rc);
    if (rc < 0)
        return;
    if (strcmp(out, c->want) != 0 || dir != c->dir_form)
        iop_test_fail(__FILE__, __LINE__, "'%s': '%s' dir %d, want '%s' dir %d", c->raw, out, dir,
                      c->want, c->dir_form);
}

IOP_TEST(path_resolve_battery, be)
{
    (void)be;
    for (size_t i = 0; i < sizeof resolves / sizeof resolves[0]; i++)
        check_resolve(&resolves[i]);
}

IOP_TEST(path_resolve_nul_and_limits, be)
{
    (void)be;
    char out[8];
    int dir;
    /* A literal NUL inside the slice. */
    CHECK_EQ(http_path_resolve("/a\0b", 4, out, sizeof out, &dir), -400);
    /* Exactly fitting, one byte short. */
    CHECK_EQ(http_path_resolve("/abcdefg", 8, out, 8, &dir), 7);
    check_str(__LINE__, "fit", out, "abcdefg");
    CHECK_EQ(http_path_resolve("/abcdefgh", 9, out, 8, &dir), -414);
    CHECK_EQ(http_path_resolve("/abc/defg", 9, out, 8, &dir), -414);
    CHECK_EQ(http_path_resolve("/", 1, out, 0, &dir), -414);
    CHECK_EQ(http_path_resolve("/", 1, out, 1, &dir), 0);
    CHECK_EQ(out[0], '\0');
    /* The limit is on the result, not on what ".." takes back. */
    const char *long_up = "/aaaaaaaaaaaaaaaaaaaa/bbbbbbbbbbbb/../../c/d";
    CHECK_EQ(http_path_resolve(long_up, strlen(long_up), out, 4, &dir), 3);
    check_str(__LINE__, "long_up", out, "c/d");
    CHECK_EQ(dir, 0);
    const char *up_all = "/x/aaaaaaaaaaaaaaaaaaaaaaa/..";
    CHECK_EQ(http_path_resolve(up_all, strlen(up_all), out, 2, &dir), 1);
    check_str(__LINE__, "up_all", out, "x");
    CHECK_EQ(dir, 1);
    /* A dot segment costs nothing. */
    CHECK_EQ(http_path_resolve("/././a/.", 8, out, 2, &dir), 1);
    /* Only the slice is read. */
    CHECK_EQ(http_path_resolve("/ab/cd", 3, out, sizeof out, &dir), 2);
    check_str(__LINE__, "slice", out, "ab");
}

/* ---- http_open_beneath --------------------------------------------------- */

typedef int (*open_fn)(int rootfd, const char *rel, int flags);

struct tree {
    char top[64];  /* the temp dir, holding outside.txt and root/ */
    char root[96]; /* the served directory */
    int rootfd;
};

static void make_tree(struct tree *t)
{
    temp_dir(t->top, sizeof t->top);
    snprintf(t->root, sizeof t->root, "%s/root", t->top);
    int top = open(t->top, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(top >= 0);
    write_file(top, "outside.txt", "secret");
    CHECK(mkdirat(top, "root", 0755) == 0);
    close(top);
    t->rootfd = open(t->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(t->rootfd >= 0);
    int r = t->rootfd;
    write_file(r, "file.txt", "hello");
    CHECK(mkdirat(r, "sub", 0755) == 0);
    write_file(r, "sub/inner.txt", "inner");
    CHECK(symlinkat("sub/inner.txt", r, "link_in") == 0);
    CHECK(symlinkat("sub", r, "link_dir") == 0);
    CHECK(symlinkat("../file.txt", r, "sub/link_sibling") == 0);
    CHECK(symlinkat("/etc/passwd", r, "link_abs") == 0);
    CHECK(symlinkat("../outside.txt", r, "link_up") == 0);
    CHECK(symlinkat("../../outside.txt", r, "sub/link_up2") == 0);
    CHECK(symlinkat("..", r, "link_parent") == 0);
    CHECK(symlinkat("nowhere", r, "dangling") == 0);
    char abs_in[160];
    snprintf(abs_in, sizeof abs_in, "%s/file.txt", t->root);
    CHECK(symlinkat(abs_in, r, "link_abs_in") == 0);
}

static void free_tree(struct tree *t)
{
    close(t->rootfd);
    rm_tree(t->top);
}

/* Open rel and expect either content (a regular file with that text), a
 * directory (content "/"), or the error want. */
static void expect_open(open_fn fn, int rootfd, const char *rel, int flags, int want,
                        const char *content, int line)
{
    int fd = fn(rootfd, rel, flags);
    if (want < 0) {
        if (fd != want) {
            if (fd >= 0)
                close(fd);
            iop_test_fail(__FILE__, line, "'%s': got %d (%s), want %s", rel, fd,
                          fd < 0 ? iop_strerror(fd) : "an fd", iop_strerror(want));
        }
        return;
    }
    if (fd < 0)
        iop_test_fail(__FILE__, line, "'%s': %s", rel, iop_strerror(fd));
    CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    if (strcmp(content, "/") == 0) {
        if (!S_ISDIR(st.st_mode))
            iop_test_fail(__FILE__, line, "'%s': not a directory", rel);
    } else {
        char buf[64] = {0};
        CHECK(read(fd, buf, sizeof buf - 1) >= 0);
        if (strcmp(buf, content) != 0)
            iop_test_fail(__FILE__, line, "'%s': read '%s', want '%s'", rel, buf, content);
    }
    close(fd);
}

/* What both ways agree on. */
static void open_common(open_fn fn, int r)
{
    expect_open(fn, r, "file.txt", O_RDONLY, 0, "hello", __LINE__);
    expect_open(fn, r, "sub/inner.txt", O_RDONLY, 0, "inner", __LINE__);
    expect_open(fn, r, "", O_RDONLY | O_DIRECTORY, 0, "/", __LINE__);
    expect_open(fn, r, "sub", O_RDONLY | O_DIRECTORY, 0, "/", __LINE__);
    expect_open(fn, r, "sub", O_RDONLY, 0, "/", __LINE__);
    expect_open(fn, r, "missing", O_RDONLY, -ENOENT, NULL, __LINE__);
    expect_open(fn, r, "sub/missing", O_RDONLY, -ENOENT, NULL, __LINE__);
    expect_open(fn, r, "nodir/x", O_RDONLY, -ENOENT, NULL, __LINE__);
    expect_open(fn, r, "file.txt/x", O_RDONLY, -ENOTDIR, NULL, __LINE__);
    expect_open(fn, r, "file.txt", O_RDONLY | O_DIRECTORY, -ENOTDIR, NULL, __LINE__);
    /* Not what http_path_resolve makes, but must not escape either. */
    expect_open(fn, r, "../outside.txt", O_RDONLY, -EXDEV, NULL, __LINE__);
    expect_open(fn, r, "sub/../../outside.txt", O_RDONLY, -EXDEV, NULL, __LINE__);
    expect_open(fn, r, "/etc/passwd", O_RDONLY, -EXDEV, NULL, __LINE__);
    if (geteuid() != 0) { /* root reads anything */
        write_file(r, "secret", "x");
        CHECK(fchmodat(r, "secret", 0, 0) == 0);
        expect_open(fn, r, "secret", O_RDONLY, -EACCES, NULL, __LINE__);
        CHECK(unlinkat(r, "secret", 0) == 0);
    }
}

static int have_openat2(int rootfd)
{
    struct open_how how = {.flags = O_RDONLY | O_CLOEXEC};
    long fd = syscall(SYS_openat2, rootfd, ".", &how, sizeof how);
    if (fd >= 0)
        close((int)fd);
    return fd >= 0 || errno != ENOSYS;
}

IOP_TEST(open_beneath_openat2, be)
{
    (void)be;
    struct tree t;
    make_tree(&t);
    if (!have_openat2(t.rootfd)) {
        free_tree(&t);
        IOP_SKIP("no openat2 on this kernel");
    }
    int r = t.rootfd;
    open_fn fn = http_open_beneath;
    open_common(fn, r);
    /* Symlinks that stay inside are followed... */
    expect_open(fn, r, "link_in", O_RDONLY, 0, "inner", __LINE__);
    expect_open(fn, r, "link_dir/inner.txt", O_RDONLY, 0, "inner", __LINE__);
    expect_open(fn, r, "link_dir", O_RDONLY | O_DIRECTORY, 0, "/", __LINE__);
    expect_open(fn, r, "sub/link_sibling", O_RDONLY, 0, "hello", __LINE__);
    /* ...those that leave are refused, absolute ones always. */
    expect_open(fn, r, "link_abs", O_RDONLY, -EXDEV, NULL, __LINE__);
    expect_open(fn, r, "link_abs_in", O_RDONLY, -EXDEV, NULL, __LINE__);
    expect_open(fn, r, "link_up", O_RDONLY, -EXDEV, NULL, __LINE__);
    expect_open(fn, r, "sub/link_up2", O_RDONLY, -EXDEV, NULL, __LINE__);
    expect_open(fn, r, "link_parent/outside.txt", O_RDONLY, -EXDEV, NULL, __LINE__);
    expect_open(fn, r, "link_dir/link_up2", O_RDONLY, -EXDEV, NULL, __LINE__);
    expect_open(fn, r, "dangling", O_RDONLY, -ENOENT, NULL, __LINE__);
    /* Magic links are refused even when /proc is reachable. */
    CHECK(symlinkat("/proc/self/root", r, "magic") == 0);
    expect_open(fn, r, "magic/etc/passwd", O_RDONLY, -EXDEV, NULL, __LINE__);
    free_tree(&t);
}

IOP_TEST(open_beneath_walk, be)
{
    (void)be;
    struct tree t;
    make_tree(&t);
    int r = t.rootfd;
    open_fn fn = http__open_walk;
    open_common(fn, r);
    expect_open(fn, r, "sub//inner.txt", O_RDONLY, 0, "inner", __LINE__);
    expect_open(fn, r, "./file.txt", O_RDONLY, 0, "hello", __LINE__);
    /* The walk cannot tell inside from outside: every symlink is refused. */
    const char *links[] = {"link_in",  "link_dir/inner.txt", "link_dir",
                           "link_abs", "link_abs_in",        "link_up",
                           "dangling", "sub/link_up2",       "link_parent/outside.txt"};
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        expect_open(fn, r, links[i], O_RDONLY, -ELOOP, NULL, __LINE__);
    expect_open(fn, r, "link_dir", O_RDONLY | O_DIRECTORY, -ELOOP, NULL, __LINE__);
    expect_open(fn, r, "link_in", O_PATH, -ELOOP, NULL, __LINE__);
    char longname[NAME_MAX + 8];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    expect_open(fn, r, longname, O_RDONLY, -ENAMETOOLONG, NULL, __LINE__);
    free_tree(&t);
}

/* ---- MIME types ---------------------------------------------------------- */

static void expect_mime(const char *name, const char *want, int line)
{
    check_str(line, name, http_mime_type(name, strlen(name)), want);
}

IOP_TEST(mime_from_file, be)
{
    (void)be;
    char dir[64], file[96];
    temp_dir(dir, sizeof dir);
    snprintf(file, sizeof file, "%s/mime.types", dir);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(dfd >= 0);
    write_file(dfd, "mime.types",
               "# comment line with text/x-not a b c\n"
               "\n"
               "text/html\t\t\thtml htm\n"
               "text/css css   # trailing comment css2\n"
               "application/x-foo .foo FOO2\r\n"
               "notatype xyz\n"
               "   image/png\tpng\n"
               "text/x-first dup\n"
               "text/x-second dup\n"
               "application/x-empty\n"
               "application/x-last last");
    close(dfd);
    CHECK_EQ(http_mime_load(file), 0);
    CHECK_EQ(http_mime_load(file), -EALREADY);
    const char *oct = "application/octet-stream";
    expect_mime("x.html", "text/html", __LINE__);
    expect_mime("dir/A.HTM", "text/html", __LINE__);
    expect_mime("a.CSS", "text/css", __LINE__);
    expect_mime("x.css2", oct, __LINE__);
    expect_mime("x.foo", "application/x-foo", __LINE__);
    expect_mime("x.foo2", "application/x-foo", __LINE__);
    expect_mime("x.png", "image/png", __LINE__);
    expect_mime("x.dup", "text/x-second", __LINE__);
    expect_mime("x.last", "application/x-last", __LINE__);
    expect_mime("x.xyz", oct, __LINE__);
    expect_mime("x.b", oct, __LINE__);
    expect_mime("noext", oct, __LINE__);
    expect_mime("dir.d/file", oct, __LINE__);
    expect_mime("dir.html/file", oct, __LINE__);
    expect_mime("x.", oct, __LINE__);
    expect_mime(".css", oct, __LINE__);
    expect_mime("a/.html", oct, __LINE__);
    expect_mime("x.html.gz", oct, __LINE__);
    expect_mime("x.gz.html", "text/html", __LINE__);
    expect_mime("x.htmlx", oct, __LINE__);
    expect_mime("x.htm", "text/html", __LINE__);
    expect_mime("x.averyveryverylongextensionindeed", oct, __LINE__);
    expect_mime("", oct, __LINE__);
    /* Only the slice counts. */
    CHECK(strcmp(http_mime_type("x.htmlfoo", 6), "text/html") == 0);
    rm_tree(dir);
}

IOP_TEST(mime_many_entries, be)
{
    (void)be;
    char dir[64], file[96];
    temp_dir(dir, sizeof dir);
    snprintf(file, sizeof file, "%s/mime.types", dir);
    FILE *f = fopen(file, "w");
    CHECK(f != NULL);
    for (int i = 0; i < 5000; i++)
        fprintf(f, "type/t%d e%d E%dx\n", i, i, i);
    fclose(f);
    CHECK_EQ(http_mime_load(file), 0);
    for (int i = 0; i < 5000; i++) {
        char name[32], want[32];
        snprintf(want, sizeof want, "type/t%d", i);
        snprintf(name, sizeof name, "f.E%d", i);
        expect_mime(name, want, __LINE__);
        snprintf(name, sizeof name, "f.e%dX", i);
        expect_mime(name, want, __LINE__);
    }
    expect_mime("f.e5000", "application/octet-stream", __LINE__);
    rm_tree(dir);
}

IOP_TEST(mime_missing_file, be)
{
    (void)be;
    CHECK_EQ(http_mime_load("/nonexistent/ioplex/mime.types"), -ENOENT);
    expect_mime("x.html", "application/octet-stream", __LINE__);
    expect_mime("x", "application/octet-stream", __LINE__);
}

IOP_TEST(mime_system_table, be)
{
    (void)be;
    if (access("/etc/mime.types", R_OK) != 0)
        IOP_SKIP("no /etc/mime.types");
    expect_mime("x.html", "text/html", __LINE__);
    expect_mime("a.CSS", "text/css", __LINE__);
    expect_mime("p.png", "image/png", __LINE__);
    expect_mime("noext", "application/octet-stream", __LINE__);
    expect_mime("dir.d/file", "application/octet-stream", __LINE__);
    CHECK_EQ(http_mime_load(NULL), -EALREADY);
}

/* ---- dates --------------------------------------------------------------- */

#define T1994 ((time_t)784111777) /* Sun, 06 Nov 1994 08:49:37 GMT */

static void expect_date(const char *s, int rc, time_t want, int line)
{
    time_t t = -12345;
    int got = http_date_parse(s, strlen(s), &t);
    if (got != rc || (rc == 0 && t != want))
        iop_test_fail(__FILE__, line, "'%s': rc %d t %lld, want rc %d t %lld", s, got, (long long)t,
                      rc, (long long)want);
}

IOP_TEST(date_format, be)
{
    (void)be;
    char out[HTTP_DATE_LEN + 1];
    http_date(T1994, out);
    check_str(__LINE__, "1994", out, "Sun, 06 Nov 1994 08:49:37 GMT");
    http_date(0, out);
    check_str(__LINE__, "epoch", out, "Thu, 01 Jan 1970 00:00:00 GMT");
    http_date(951782400, out);
    check_str(__LINE__, "leap day", out, "Tue, 29 Feb 2000 00:00:00 GMT");
    http_date(-5, out);
    check_str(__LINE__, "negative", out, "Thu, 01 Jan 1970 00:00:00 GMT");
    http_date((time_t)1 << 40, out);
    check_str(__LINE__, "far future", out, "Fri, 31 Dec 9999 23:59:59 GMT");
    CHECK_EQ(strlen(out), HTTP_DATE_LEN);
    /* Round trip over sixty years in uneven steps. */
    for (time_t t = 0; t < (time_t)60 * 366 * 86400; t += 86400 * 3 + 3607) {
        time_t back;
        http_date(t, out);
        CHECK_EQ(strlen(out), HTTP_DATE_LEN);
        CHECK_OK(http_date_parse(out, HTTP_DATE_LEN, &back));
        CHECK_EQ(back, t);
    }
}

/* The RFC 850 two-digit year, yy years after this_year % 100. */
static time_t rfc850_expect(int year)
{
    struct tm tm = {.tm_year = year - 1900, .tm_mon = 0, .tm_mday = 1};
    return timegm(&tm);
}

IOP_TEST(date_parse_forms, be)
{
    (void)be;
    expect_date("Sun, 06 Nov 1994 08:49:37 GMT", 0, T1994, __LINE__);
    expect_date("Sun Nov  6 08:49:37 1994", 0, T1994, __LINE__);
    expect_date("Sun Nov 06 08:49:37 1994", 0, T1994, __LINE__);
    expect_date("Sunday, 06-Nov-94 08:49:37 GMT", 0, T1994, __LINE__);
    expect_date("Thu, 01 Jan 1970 00:00:00 GMT", 0, 0, __LINE__);
    expect_date("Tue, 29 Feb 2000 00:00:00 GMT", 0, 951782400, __LINE__);
    expect_date("Wed, 31 Dec 1969 23:59:59 GMT", 0, -1, __LINE__);
    /* A leap second is in the grammar; it is the next second. */
    expect_date("Sat, 31 Dec 2016 23:59:60 GMT", 0, 1483228800, __LINE__);
    /* The weekday is not checked against the date. */
    expect_date("Mon, 06 Nov 1994 08:49:37 GMT", 0, T1994, __LINE__);
    expect_date("Wednesday, 06-Nov-94 08:49:37 GMT", 0, T1994, __LINE__);

    /* RFC 9110 5.6.7: more than 50 years ahead means the past century. */
    time_t now = time(NULL);
    struct tm cur;
    gmtime_r(&now, &cur);
    int year = cur.tm_year + 1900;
    char s[64];
    snprintf(s, sizeof s, "Friday, 01-Jan-%02d 00:00:00 GMT", (year + 49) % 100);
    expect_date(s, 0, rfc850_expect(year + 49), __LINE__);
    snprintf(s, sizeof s, "Friday, 01-Jan-%02d 00:00:00 GMT", (year + 51) % 100);
    expect_date(s, 0, rfc850_expect(year + 51 - 100), __LINE__);
    snprintf(s, sizeof s, "Friday, 01-Jan-%02d 00:00:00 GMT", year % 100);
    expect_date(s, 0, rfc850_expect(year), __LINE__);
}

IOP_TEST(date_parse_rejects, be)
{
    (void)be;
    const char *bad[] = {
        "",
        "garbage",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 gmt",
        "sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 nov 1994 08:49:37 GMT",
        "Xyz, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT ",
        " Sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun,  6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 06-Nov-1994 08:49:37 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 31 Nov 1994 08:49:37 GMT",
        "Sun, 29 Feb 1900 00:00:00 GMT",
        "Sun, 29 Feb 2023 00:00:00 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 06 Nov 1994 08:49-37 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:3x GMT",
        "Sun, 06 Nov +994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMTX",
        "Sun Nov 6 08:49:37 1994",
        "Sun Nov  6 08:49:37 94",
        "Sun Nov  0 08:49:37 1994",
        "Sun Nov 6  08:49:37 1994",
        "Sun Nov  6 08:49:37 1994 ",
        "Sunday, 06-Nov-94 08:49:37 UTC",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sunday, 06 Nov 94 08:49:37 GMT",
        "Sundae, 06-Nov-94 08:49:37 GMT",
        "Sun, 06-Nov-94 08:49:37 GMT",
        "Sunday, 6-Nov-94 08:49:37 GMT",
        "Sunday,06-Nov-94 08:49:37 GMT ",
        "Sunday, 06-Nov-9x 08:49:37 GMT",
        ", 06-Nov-94 08:49:37 GMT",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_date(bad[i], -EINVAL, 0, __LINE__);
    time_t t;
    /* NULs inside the slice. */
    CHECK_EQ(http_date_parse("Sun, 06 Nov 1994 08:49:37 G\0T", 29, &t), -EINVAL);
    /* Only the slice is read. */
    CHECK_EQ(http_date_parse("Sun, 06 Nov 1994 08:49:37 GMTxyz", 29, &t), 0);
    CHECK_EQ(t, T1994);
}

/* ---- ranges -------------------------------------------------------------- */

struct range_case {
    const char *s;
    uint64_t size;
    int rc;
    uint64_t first, last;
};

static const struct range_case ranges[] = {
    {"bytes=0-499", 1000, 1, 0, 499},
    {"bytes=500-999", 1000, 1, 500, 999},
    {"bytes=500-", 1000, 1, 500, 999},
    {"bytes=-200", 1000, 1, 800, 999},
    {"bytes=-1000", 1000, 1, 0, 999},
    {"bytes=-2000", 1000, 1, 0, 999},
    {"bytes=0-0", 1000, 1, 0, 0},
    {"bytes=999-999", 1000, 1, 999, 999},
    {"bytes=999-5000", 1000, 1, 999, 999},
    {"bytes=0-", 1000, 1, 0, 999},
    {"bytes=007-010", 1000, 1, 7, 10},
    {"BYTES=1-2", 1000, 1, 1, 2},
    {"Bytes=1-2", 1000, 1, 1, 2},
    {" bytes=1-2 ", 1000, 1, 1, 2},
    {"bytes = 1-2", 1000, 1, 1, 2},
    {"bytes=\t1 - 2\t", 1000, 1, 1, 2},
    {"bytes=- 5", 1000, 1, 995, 999},
    {"bytes=-1", 1, 1, 0, 0},
    {"bytes=0-", 1, 1, 0, 0},
    {"bytes=0-", UINT64_MAX, 1, 0, UINT64_MAX - 1},
    {"bytes=0-18446744073709551615", 10, 1, 0, 9},
    /* Unsatisfiable. */
    {"bytes=1000-", 1000, -416, 0, 0},
    {"bytes=1000-2000", 1000, -416, 0, 0},
    {"bytes=-0", 1000, -416, 0, 0},
    {"bytes=-000", 1000, -416, 0, 0},
    {"bytes=18446744073709551615-", 1000, -416, 0, 0},
    {"bytes=0-", 0, -416, 0, 0},
    {"bytes=0-0", 0, -416, 0, 0},
    {"bytes=-5", 0, -416, 0, 0},
    {"bytes=-0", 0, -416, 0, 0},
    /* Ignored: the whole file. */
    {"bytes=5-4", 1000, 0, 0, 0},
    {"bytes=5-4", 0, 0, 0, 0},
    {"bytes=0-1,5-6", 1000, 0, 0, 0},
    {"bytes=0-1,", 1000, 0, 0, 0},
    {"bytes=,0-1", 1000, 0, 0, 0},
    {"items=0-1", 1000, 0, 0, 0},
    {"byte=0-1", 1000, 0, 0, 0},
    {"bytesx=0-1", 1000, 0, 0, 0},
    {"bytes0-1", 1000, 0, 0, 0},
    {"bytes", 1000, 0, 0, 0},
    {"bytes=", 1000, 0, 0, 0},
    {"bytes=-", 1000, 0, 0, 0},
    {"bytes=--1", 1000, 0, 0, 0},
    {"bytes=1--2", 1000, 0, 0, 0},
    {"bytes=a-b", 1000, 0, 0, 0},
    {"bytes=1-2x", 1000, 0, 0, 0},
    {"bytes=1-2 3", 1000, 0, 0, 0},
    {"bytes=1 2-3", 1000, 0, 0, 0},
    {"bytes=+1-2", 1000, 0, 0, 0},
    {"bytes=1-+2", 1000, 0, 0, 0},
    {"bytes=0x1-2", 1000, 0, 0, 0},
    {"bytes=1", 1000, 0, 0, 0},
    {"bytes==1-2", 1000, 0, 0, 0},
    {"bytes=18446744073709551616-", 1000, 0, 0, 0},
    {"bytes=0-18446744073709551616", 1000, 0, 0, 0},
    {"bytes=-18446744073709551616", 1000, 0, 0, 0},
    {"", 1000, 0, 0, 0},
};

IOP_TEST(range_forms_and_edges, be)
{
    (void)be;
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
        const struct range_case *c = &ranges[i];
        uint64_t first = 77, last = 77;
        int rc = http_range(c->s, strlen(c->s), c->size, &first, &last);
        if (rc != c->rc || (rc == 1 && (first != c->first || last != c->last)))
            iop_test_fail(__FILE__, __LINE__, "'%s' size %llu: rc %d %llu-%llu, want %d %llu-%llu",
                          c->s, (unsigned long long)c->size, rc, (unsigned long long)first,
                          (unsigned long long)last, c->rc, (unsigned long long)c->first,
                          (unsigned long long)c->last);
    }
    /* Only the slice is read. */
    uint64_t first, last;
    CHECK_EQ(http_range("bytes=1-2,3-4", 9, 100, &first, &last), 1);
    CHECK_EQ(last, 2);
}

/* "a-b,c-d" of the ranges out[0..n) (n <= 0: the number). */
static void ranges_text(const struct http_byterange *rg, int n, char *out, size_t outsz)
{
    size_t len = 0;
    if (n <= 0)
        snprintf(out, outsz, "%d", n);
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(out + len, outsz - len, "%s%llu-%llu", i ? "," : "",
                                (unsigned long long)rg[i].first, (unsigned long long)rg[i].last);
}

IOP_TEST(ranges_several, be)
{
    (void)be;
    static const struct {
        const char *s;
        uint64_t size;
        const char *want; /* the coalesced ranges, or "0" / "-416" */
    } cases[] = {
        {"bytes=0-0", 100, "0-0"},
        {"bytes=0-4,10-14", 100, "0-4,10-14"},
        {"bytes=10-14,0-4", 100, "0-4,10-14"},
        {"bytes=0-4,5-9", 100, "0-9"},  /* adjacent */
        {"bytes=0-9,5-14", 50, "0-14"}, /* overlapping */
        {"bytes=0-1, 4-5 ,,8-9,", 100, "0-1,4-5,8-9"},
        {"bytes=-5,0-0", 100, "0-0,95-99"},
        {"bytes=200-300,0-1", 100, "0-1"}, /* the unsatisfiable one dropped */
        {"bytes=200-300,400-", 100, "-416"},
        {"bytes=0-99,0-0", 100, "0"},      /* more than the file */
        {"bytes=0-49,50-99", 100, "0-99"}, /* exactly the file */
        {"bytes=0-1,x", 100, "0"},         /* one bad spec: ignore the header */
        {"bytes=,", 100, "0"},
        {"items=0-1,2-3", 100, "0"},
        {"bytes=0-0,2-2,4-4,6-6,8-8,10-10,12-12,14-14,16-16,18-18,20-20,22-22,24-24,26-26,"
         "28-28,30-30",
         100,
         "0-0,2-2,4-4,6-6,8-8,10-10,12-12,14-14,16-16,18-18,20-20,22-22,24-24,26-26,28-28,"
         "30-30"},
        {"bytes=0-0,2-2,4-4,6-6,8-8,10-10,12-12,14-14,16-16,18-18,20-20,22-22,24-24,26-26,"
         "28-28,30-30,32-32",
         100, "0"},                    /* 17 specs */
        {"bytes=0-0,0-0,0-0", 2, "0"}, /* 3 bytes asked of 2 */
        {"bytes=0-", 0, "-416"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct http_byterange rg[HTTP_RANGES_MAX];
        char got[512];
        int n = http_ranges(cases[i].s, strlen(cases[i].s), cases[i].size, rg);
        ranges_text(rg, n, got, sizeof got);
        if (strcmp(got, cases[i].want) != 0)
            iop_test_fail(__FILE__, __LINE__, "'%s' size %llu: %s, want %s", cases[i].s,
                          (unsigned long long)cases[i].size, got, cases[i].want);
    }
    /* One range agrees with http_range. */
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
        const struct range_case *c = &ranges[i];
        struct http_byterange rg[HTTP_RANGES_MAX];
        if (strchr(c->s, ','))
            continue; /* several: http_range's 0 is "not mine" */
        int n = http_ranges(c->s, strlen(c->s), c->size, rg);
        if (n != c->rc || (n == 1 && (rg[0].first != c->first || rg[0].last != c->last)))
            iop_test_fail(__FILE__, __LINE__, "'%s': http_ranges %d", c->s, n);
    }
}

/* ---- ETags --------------------------------------------------------------- */

IOP_TEST(etag_format, be)
{
    (void)be;
    struct stat st = {0};
    char out[64];
    st.st_ino = 0x1234;
    st.st_size = 0;
    st.st_mtim.tv_sec = 1;
    st.st_mtim.tv_nsec = 5;
    CHECK_EQ(http_etag(&st, out), 17);
    check_str(__LINE__, "etag", out, "\"1234-0-3b9aca05\"");
    st.st_ino = (ino_t)-1;
    st.st_size = INT64_MAX;
    st.st_mtim.tv_sec = INT64_MAX / 1000000000;
    st.st_mtim.tv_nsec = 999999999;
    size_t n = http_etag(&st, out);
    CHECK(n < 64);
    CHECK_EQ(strlen(out), n);
    CHECK(strncmp(out, "\"ffffffffffffffff-7fffffffffffffff-", 35) == 0);
    /* A changed mtime (to the nanosecond) changes the tag. */
    char again[64];
    st.st_mtim.tv_nsec--;
    http_etag(&st, again);
    CHECK(strcmp(out, again) != 0);
}

struct etag_case {
    const char *list;
    const char *etag;
    int match;
};

static const struct etag_case etags[] = {
    {"\"abc\"", "\"abc\"", 1},
    {"W/\"abc\"", "\"abc\"", 1},
    {"\"abc\"", "W/\"abc\"", 1},
    {"W/\"abc\"", "W/\"abc\"", 1},
    {"*", "\"abc\"", 1},
    {" * ", "\"abc\"", 1},
    {"\"x\", \"abc\"", "\"abc\"", 1},
    {"\"x\",W/\"abc\"", "\"abc\"", 1},
    {" \"x\" ,\t \"abc\" ", "\"abc\"", 1},
    {", ,\"abc\",", "\"abc\"", 1},
    {"\"a,b\", \"abc\"", "\"abc\"", 1},
    {"\"a,b\"", "\"a,b\"", 1},
    {"\"\"", "\"\"", 1},
    {"junk, \"abc\"", "\"abc\"", 1},
    {"\"x\" junk, \"abc\"", "\"abc\"", 1},
    {"\"abcd\"", "\"abc\"", 0},
    {"\"ab\"", "\"abc\"", 0},
    {"\"ABC\"", "\"abc\"", 0},
    {"abc", "\"abc\"", 0},
    {"abc", "abc", 0},
    {"\"abc", "\"abc\"", 0},
    {"\"a,b\"", "\"a\"", 0},
    {"w/\"abc\"", "\"abc\"", 0},
    {"W/", "\"abc\"", 0},
    {"W", "\"abc\"", 0},
    {"", "\"abc\"", 0},
    {",,,", "\"abc\"", 0},
    {"**", "\"abc\"", 0},
    {"junk \"abc\"", "\"abc\"", 0},
    {"\"x\", \"y\"", "\"abc\"", 0},
};

IOP_TEST(etag_match_cases, be)
{
    (void)be;
    for (size_t i = 0; i < sizeof etags / sizeof etags[0]; i++) {
        const struct etag_case *c = &etags[i];
        int m = http_etag_match(c->list, strlen(c->list), c->etag, strlen(c->etag));
        if (m != c->match)
            iop_test_fail(__FILE__, __LINE__, "list '%s' etag '%s': %d, want %d", c->list, c->etag,
                          m, c->match);
    }
    /* Only the slices are read. */
    CHECK_EQ(http_etag_match("\"abc\"x", 5, "\"abc\"y", 5), 1);
}

IOP_TEST(if_range_validators, be)
{
    (void)be;
    const char *tag = "\"1a-2b-3c\"";
    size_t tn = strlen(tag);
    time_t mtime = 784111777, now = mtime + 100; /* Sun, 06 Nov 1994 08:49:37 GMT */
    static const struct {
        const char *v;
        int ok;
    } cases[] = {
        {"\"1a-2b-3c\"", 1},
        {"\"nope\"", 0},
        {"W/\"1a-2b-3c\"", 0}, /* weak: never a strong match */
        {"\"1a-2b-3c\", \"x\"", 0},
        {"\"1a-2b-3c", 0},
        {"1a-2b-3c", 0},
        {"*", 0},
        {"", 0},
        {"Sun, 06 Nov 1994 08:49:37 GMT", 1},
        {"Sunday, 06-Nov-94 08:49:37 GMT", 1},
        {"Sun Nov  6 08:49:37 1994", 1},
        {"Sun, 06 Nov 1994 08:49:38 GMT", 0}, /* newer: not equal */
        {"Sun, 06 Nov 1994 08:49:36 GMT", 0},
        {"not a date", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *v = cases[i].v;
        int got = http_if_range(v, strlen(v), tag, tn, mtime, now);
        if (got != cases[i].ok)
            iop_test_fail(__FILE__, __LINE__, "If-Range '%s': %d, want %d", v, got, cases[i].ok);
    }
    /* A date names a second: while that second lasts the file may change
     * again under the same Last-Modified, so it is weak. */
    const char *d = "Sun, 06 Nov 1994 08:49:37 GMT";
    CHECK_EQ(http_if_range(d, strlen(d), tag, tn, mtime, mtime), 0);
    CHECK_EQ(http_if_range(d, strlen(d), tag, tn, mtime, mtime + 1), 1);
    /* Only the slice is read. */
    CHECK_EQ(http_if_range("\"1a-2b-3c\"x", tn, tag, tn, mtime, now), 1);
    CHECK_EQ(http_if_range("\"1a-2b-3c\"", tn - 1, tag, tn, mtime, now), 0);
}

/* ---- escaping ------------------------------------------------------------ */

static void check_location(int line, const char *rel, const char *query, const char *want)
{
    char out[512];
    struct http_str q = {query, query ? strlen(query) : 0};
    size_t n = http_dir_location(rel, &q, out, sizeof out);
    if (n != strlen(want) || strcmp(out, want) != 0)
        iop_test_fail(__FILE__, line, "Location of '%s' ? '%s': '%s', want '%s'", rel,
                      query ? query : "(none)", out, want);
    if (n > 3 * (strlen(rel) + q.n) + 3 || http_dir_location(rel, &q, NULL, 0) != n)
        iop_test_fail(__FILE__, line, "Location of '%s': length %zu", rel, n);
}

IOP_TEST(dir_location, be)
{
    (void)be;
    check_location(__LINE__, "sub", NULL, "/sub/");
    check_location(__LINE__, "sub", "", "/sub/?");
    check_location(__LINE__, "sub", "q=1", "/sub/?q=1");
    check_location(__LINE__, "list/dir", "a=1&b=2", "/list/dir/?a=1&b=2");
    check_location(__LINE__, "evil.example", NULL, "/evil.example/");
    check_location(__LINE__, "x y", NULL, "/x%20y/");
    check_location(__LINE__, "a\\b", NULL, "/a%5Cb/");
    check_location(__LINE__, "\\evil", NULL, "/%5Cevil/");
    check_location(__LINE__, "100%/?#\"", NULL, "/100%25/%3F%23%22/");
    check_location(__LINE__, "caf\xc3\xa9", NULL, "/caf%C3%A9/");
    check_location(__LINE__, "\x01\x7f<>", NULL, "/%01%7F%3C%3E/");
    check_location(__LINE__, "a:b@c!$&'()*+,;=~", NULL, "/a:b@c!$&'()*+,;=~/");
    /* The query keeps its escapes and meaning; what may not be in a query
     * (or in a header) is encoded. */
    check_location(__LINE__, "d", "a=%41%zz%4", "/d/?a=%41%25zz%254");
    check_location(__LINE__, "d", "x=\"y\"&z=\\/?:@", "/d/?x=%22y%22&z=%5C/?:@");
    check_location(__LINE__, "d", "\r\n\x9b #", "/d/?%0D%0A%9B%20%23");
    check_location(__LINE__, "d", "%", "/d/?%25");
    /* snprintf-like truncation. */
    char out[8];
    struct http_str q = {NULL, 0};
    memset(out, 'X', sizeof out);
    CHECK_EQ(http_dir_location("abc def", &q, out, 5), 11);
    check_str(__LINE__, "truncated", out, "/abc");
    CHECK_EQ(out[5], 'X');
}

static void check_log_escape(int line, const char *s, size_t n, const char *want)
{
    char out[1024];
    size_t got = http_log_escape(s, n, out);
    if (got != strlen(want) || memcmp(out, want, got) != 0)
        iop_test_fail(__FILE__, line, "log escape: '%.*s', want '%s'", (int)got, out, want);
}

IOP_TEST(log_escape, be)
{
    (void)be;
    check_log_escape(__LINE__, "", 0, "");
    check_log_escape(__LINE__, "GET /a?b=c HTTP/1.1", 19, "GET /a?b=c HTTP/1.1");
    check_log_escape(__LINE__, "GET /q\"-200-1-\"x HTTP/1.1", 25,
                     "GET /q\\x22-200-1-\\x22x HTTP/1.1");
    check_log_escape(__LINE__, "\x9b\xc2\x9b", 3, "\\x9B\\xC2\\x9B");
    check_log_escape(__LINE__, "a\\b", 3, "a\\x5Cb");
    check_log_escape(__LINE__, "\x1b[2J\t\x7f", 6, "\\x1B[2J\\x09\\x7F");
    check_log_escape(__LINE__, "a\0b", 3, "a\\x00b");
    check_log_escape(__LINE__, " ~", 2, " ~");
    /* Every byte: 93 printable ones stay, 163 take four bytes each. */
    char all[256], out[1024];
    for (int i = 0; i < 256; i++)
        all[i] = (char)i;
    CHECK_EQ(http_log_escape(all, 256, out), 93 + 163 * 4);
    for (int i = 0, at = 0; i < 256; i++) {
        int plain = i >= 0x20 && i <= 0x7e && i != '"' && i != '\\';
        if (plain) {
            CHECK_EQ((unsigned char)out[at], i);
            at++;
        } else {
            char want[5];
            snprintf(want, sizeof want, "\\x%02X", i);
            CHECK(memcmp(out + at, want, 4) == 0);
            at += 4;
        }
    }
}

IOP_TEST(html_escape_truncation, be)
{
    (void)be;
    char out[64];
    const char *s = "a<b>&\"c'";
    const char *want = "a&lt;b&gt;&amp;&quot;c&#39;";
    size_t need = strlen(want);
    CHECK_EQ(http_html_escape(s, strlen(s), out, sizeof out), need);
    check_str(__LINE__, "full", out, want);
    CHECK_EQ(http_html_escape(s, strlen(s), NULL, 0), need);
    /* Truncated like snprintf: the first outsz-1 bytes, then a NUL. */
    for (size_t sz = 1; sz <= need + 1; sz++) {
        memset(out, 'X', sizeof out);
        CHECK_EQ(http_html_escape(s, strlen(s), out, sz), need);
        CHECK_EQ(strlen(out), sz - 1);
        CHECK(strncmp(out, want, sz - 1) == 0);
        CHECK_EQ(out[sz], 'X');
    }
    CHECK_EQ(http_html_escape("", 0, out, sizeof out), 0);
    CHECK_EQ(out[0], '\0');
    CHECK_EQ(http_html_escape("plain \xc3\xa9", 8, out, sizeof out), 8);
    check_str(__LINE__, "plain", out, "plain \xc3\xa9");
    CHECK_EQ(http_html_escape("a\0b", 3, out, sizeof out), 3);
    CHECK(memcmp(out, "a\0b", 4) == 0);
}

IOP_TEST(pct_encode_truncation, be)
{
    (void)be;
    char out[1024];
    CHECK_EQ(http_pct_encode("a b/c", 5, 1, out, sizeof out), 7);
    check_str(__LINE__, "slash kept", out, "a%20b/c");
    CHECK_EQ(http_pct_encode("a b/c", 5, 0, out, sizeof out), 9);
    check_str(__LINE__, "slash encoded", out, "a%20b%2Fc");
    CHECK_EQ(http_pct_encode("AZaz09-._~", 10, 0, out, sizeof out), 10);
    check_str(__LINE__, "unreserved", out, "AZaz09-._~");
    CHECK_EQ(http_pct_encode("%#?&+\xff\x80", 7, 0, out, sizeof out), 21);
    check_str(__LINE__, "reserved", out, "%25%23%3F%26%2B%FF%80");
    /* Every byte value: 66 unreserved, 190 encoded. */
    char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (char)i;
    CHECK_EQ(http_pct_encode(all, 256, 0, out, sizeof out), 66 + 190 * 3);
    CHECK(strncmp(out, "%00%01", 6) == 0);
    CHECK_EQ(http_pct_encode(all, 256, 0, NULL, 0), 66 + 190 * 3);
    for (size_t sz = 1; sz <= 10; sz++) {
        memset(out, 'X', 16);
        CHECK_EQ(http_pct_encode("a b/c", 5, 0, out, sz), 9);
        CHECK_EQ(strlen(out), sz - 1);
        CHECK(strncmp(out, "a%20b%2Fc", sz - 1) == 0);
        CHECK_EQ(out[sz], 'X');
    }
}

/* ---- directory listings -------------------------------------------------- */

static void expect_in(const char *body, const char *needle, const char **after, int line)
{
    const char *at = strstr(body, needle);
    if (!at)
        iop_test_fail(__FILE__, line, "listing lacks '%s':\n%s", needle, body);
    if (after) {
        if (at < *after)
            iop_test_fail(__FILE__, line, "'%s' out of order", needle);
        *after = at;
    }
}

static size_t count_of(const char *body, const char *needle)
{
    size_t n = 0;
    for (const char *p = body; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

IOP_TEST(dir_listing_awkward_names, be)
{
    (void)be;
    char dir[64];
    temp_dir(dir, sizeof dir);
    int d = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(d >= 0);
    write_file(d, "b.txt", "");
    write_file(d, "<script>&\"'.html", "");
    write_file(d, "100%#?.txt", "");
    write_file(d, "caf\xc3\xa9", "");
    write_file(d, "bad\xff\xc3(", "");
    write_file(d, "new\nline", "");
    write_file(d, "Zeta", "");
    write_file(d, ".hidden", "");
    CHECK(mkdirat(d, "a dir", 0755) == 0);
    CHECK(mkdirat(d, "sub", 0755) == 0);
    write_file(d, "sub/not-listed", "");
    CHECK(symlinkat("a dir", d, "link_to_dir") == 0);
    CHECK(symlinkat("b.txt", d, "link_to_file") == 0);
    CHECK(symlinkat("nowhere", d, "dangling") == 0);

    char *body = NULL;
    size_t len = 0;
    CHECK_OK(http_dir_listing(d, "/a <b>&/", NULL, &body, &len));
    CHECK(body != NULL);
    CHECK_EQ(strlen(body), len);
    const char *at = body;
    expect_in(body, "<!DOCTYPE html>", &at, __LINE__);
    expect_in(body, "<meta charset=\"utf-8\">", &at, __LINE__);
    expect_in(body, "<meta name=\"viewport\"", &at, __LINE__);
    expect_in(body, "<title>Directory listing for /a &lt;b&gt;&amp;/</title>", &at, __LINE__);
    expect_in(body, "prefers-color-scheme:dark", &at, __LINE__);
    expect_in(body, "<h1>Directory listing for /a &lt;b&gt;&amp;/</h1>", &at, __LINE__);
    expect_in(body,
              "aria-sort=\"ascending\"><a id=\"sort-name\" href=\"?sort=name&amp;order=desc\"", &at,
              __LINE__);
    expect_in(body, "<a id=\"sort-size\" href=\"?sort=size&amp;order=asc\"", &at, __LINE__);
    expect_in(body, "<a href=\"../\" rel=\"up\">", &at, __LINE__);
    /* Directories first, then bytewise: '.' < digits < '<' < upper < lower
     * < 0xc3; invalid UTF-8 and the newline shown as U+FFFD. */
    const char *items[] = {
        "<a href=\"a%20dir/\">a dir/</a>",
        "<a href=\"link_to_dir/\">link_to_dir/</a>",
        "<a href=\"sub/\">sub/</a>",
        "<a href=\".hidden\">.hidden</a>",
        "<a href=\"100%25%23%3F.txt\">100%#?.txt</a>",
        "<a href=\"%3Cscript%3E%26%22%27.html\">&lt;script&gt;&amp;&quot;&#39;.html</a>",
        "<a href=\"Zeta\">Zeta</a>",
        "<a href=\"b.txt\">b.txt</a>",
        "<a href=\"bad%FF%C3%28\">bad\xef\xbf\xbd\xef\xbf\xbd(</a>",
        "<a href=\"caf%C3%A9\">caf\xc3\xa9</a>",
        "<a href=\"dangling\">dangling</a>",
        "<a href=\"link_to_file\">link_to_file</a>",
        "<a href=\"new%0Aline\">new\xef\xbf\xbdline</a>",
    };
    for (size_t i = 0; i < sizeof items / sizeof items[0]; i++)
        expect_in(body, items[i], &at, __LINE__);
    expect_in(body, "</html>", &at, __LINE__);
    CHECK_EQ(count_of(body, "<tr><td"), sizeof items / sizeof items[0] + 1);
    CHECK(strstr(body, "href=\".\"") == NULL && strstr(body, "not-listed") == NULL);
    CHECK(strstr(body, "title=\"0 bytes\" data-bytes=\"0\">0 B</td>") != NULL);
    free(body);

    /* The caller's fd is neither closed nor used up: list it again. */
    CHECK(fcntl(d, F_GETFD) >= 0);
    CHECK_OK(http_dir_listing(d, "/", NULL, &body, &len));
    CHECK_EQ(count_of(body, "<tr><td"), sizeof items / sizeof items[0]);
    CHECK(strstr(body, "rel=\"up\"") == NULL);
    free(body);
    close(d);
    rm_tree(dir);
}

static void set_file(int d, const char *name, size_t size, time_t mtime)
{
    int fd = openat(d, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CHECK(fd >= 0);
    CHECK(ftruncate(fd, (off_t)size) == 0);
    struct timespec ts[2] = {{mtime, 0}, {mtime, 0}};
    CHECK(futimens(fd, ts) == 0);
    close(fd);
}

/* The names of body's rows, in order, joined by ' '. */
static void row_names(const char *body, char *out, size_t outsz)
{
    size_t len = 0;
    out[0] = '\0';
    for (const char *p = body; (p = strstr(p, "<tr><td class=\"n\"><a href=\""));) {
        p = strchr(p, '>') + 1;
        p = strchr(p, '>') + 1;
        p = strchr(p, '>') + 1;
        const char *end = strchr(p, '<');
        len +=
            (size_t)snprintf(out + len, outsz - len, "%s%.*s", len ? " " : "", (int)(end - p), p);
    }
}

IOP_TEST(dir_listing_sorted, be)
{
    (void)be;
    char dir[64];
    temp_dir(dir, sizeof dir);
    int d = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(d >= 0);
    set_file(d, "big", 3u << 20, 1000);
    set_file(d, "mid", 1536, 3000);
    set_file(d, "small", 10, 2000);
    CHECK(mkdirat(d, "zdir", 0755) == 0 && mkdirat(d, "adir", 0755) == 0);
    struct timespec ts[2] = {{5000, 0}, {5000, 0}};
    CHECK(utimensat(d, "adir", ts, 0) == 0);
    ts[0].tv_sec = ts[1].tv_sec = 4000;
    CHECK(utimensat(d, "zdir", ts, 0) == 0);
    static const struct {
        const char *query, *order, *keep;
    } cases[] = {
        {"", "adir/ zdir/ big mid small", "\""},
        {"sort=name&order=desc", "zdir/ adir/ small mid big", "?sort=name&amp;order=desc\""},
        {"sort=size", "adir/ zdir/ small mid big", "?sort=size&amp;order=asc\""},
        {"order=desc&sort=size", "zdir/ adir/ big mid small", "?sort=size&amp;order=desc\""},
        {"sort=time", "zdir/ adir/ big small mid", "?sort=time&amp;order=asc\""},
        {"sort=time&order=desc", "adir/ zdir/ mid small big", "?sort=time&amp;order=desc\""},
        {"sort=bogus&order=sideways", "adir/ zdir/ big mid small", "\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct http_listing_opts o;
        http_listing_query((struct http_str){cases[i].query, strlen(cases[i].query)}, &o);
        char *body, names[256], keep[128];
        size_t len;
        CHECK_OK(http_dir_listing(d, "/x/", &o, &body, &len));
        row_names(body, names, sizeof names);
        const char *rows = strstr(names, "../ ") ? names + 4 : names;
        if (strcmp(rows, cases[i].order) != 0)
            iop_test_fail(__FILE__, __LINE__, "%s: order '%s', want '%s'", cases[i].query, rows,
                          cases[i].order);
        /* Directory links (and the parent's) keep the sort. */
        snprintf(keep, sizeof keep, "href=\"adir/%s", cases[i].keep);
        CHECK(strstr(body, keep) != NULL);
        snprintf(keep, sizeof keep, "href=\"../%s", cases[i].keep);
        CHECK(strstr(body, keep) != NULL);
        CHECK(strstr(body, "href=\"big\"") != NULL);
        free(body);
    }
    char *body;
    size_t len;
    CHECK_OK(http_dir_listing(d, "/x/", NULL, &body, &len));
    CHECK(strstr(body, "title=\"3145728 bytes\" data-bytes=\"3145728\">3.0 MiB</td>") != NULL);
    CHECK(strstr(body, "title=\"1536 bytes\" data-bytes=\"1536\">1.5 KiB</td>") != NULL);
    CHECK(strstr(body, "<time datetime=\"1970-01-01T00:50:00Z\">1970-01-01 00:50</time>") != NULL);
    free(body);
    close(d);
    rm_tree(dir);
}

IOP_TEST(dir_listing_json, be)
{
    (void)be;
    char dir[64];
    temp_dir(dir, sizeof dir);
    int d = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(d >= 0);
    set_file(d, "q\"b\\s\x01\xfe", 7, 86400);
    CHECK(mkdirat(d, "d", 0755) == 0);
    struct timespec ts[2] = {{0, 0}, {0, 0}};
    CHECK(utimensat(d, "d", ts, 0) == 0);
    CHECK(symlinkat("nowhere", d, "dangling") == 0);
    struct http_listing_opts o = {HTTP_SORT_NAME, 0, 1};
    char *body;
    size_t len;
    CHECK_OK(http_dir_listing(d, "/", &o, &body, &len));
    const char *at = body;
    expect_in(body,
              "[\n{\"name\":\"d\",\"type\":\"dir\",\"size\":0,"
              "\"mtime\":\"1970-01-01T00:00:00Z\",\"url\":\"d/\"},\n",
              &at, __LINE__);
    expect_in(body, "{\"name\":\"dangling\",\"type\":\"other\",\"size\":0,", &at, __LINE__);
    expect_in(body,
              "{\"name\":\"q\\\"b\\\\s\xef\xbf\xbd\xef\xbf\xbd\",\"type\":\"file\","
              "\"size\":7,\"mtime\":\"1970-01-02T00:00:00Z\",\"url\":\"q%22b%5Cs%01%FE\"}\n]\n",
              &at, __LINE__);
    free(body);
    close(d);
    rm_tree(dir);
}

IOP_TEST(dir_listing_empty_and_errors, be)
{
    (void)be;
    char dir[64];
    temp_dir(dir, sizeof dir);
    int d = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(d >= 0);
    char *body;
    size_t len;
    CHECK_OK(http_dir_listing(d, "/", NULL, &body, &len));
    CHECK_EQ(count_of(body, "<tr><td"), 0);
    CHECK(strstr(body, "<tbody>\n</tbody>") != NULL);
    free(body);
    struct http_listing_opts json = {HTTP_SORT_NAME, 0, 1};
    CHECK_OK(http_dir_listing(d, "/", &json, &body, &len));
    CHECK(strcmp(body, "[]\n") == 0);
    free(body);
    write_file(d, "f", "");
    int f = openat(d, "f", O_RDONLY | O_CLOEXEC);
    CHECK(f >= 0);
    body = NULL;
    CHECK_EQ(http_dir_listing(f, "/f", NULL, &body, &len), -ENOTDIR);
    CHECK(body == NULL);
    close(f);
    close(d);
    rm_tree(dir);
}

IOP_TEST(dir_listing_ten_thousand, be)
{
    (void)be;
    char dir[64];
    temp_dir(dir, sizeof dir);
    int d = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    CHECK(d >= 0);
    enum { N = 10000 };
    for (int i = 0; i < N; i++) {
        char name[32];
        /* Written in an order unlike the sorted one. */
        snprintf(name, sizeof name, "f%05d", (i * 7919) % N);
        int fd = openat(d, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        CHECK(fd >= 0);
        close(fd);
    }
    char *body;
    size_t len;
    CHECK_OK(http_dir_listing(d, "/big/", NULL, &body, &len));
    CHECK_EQ(count_of(body, "<tr><td class=\"n\"><a href=\"f"), N);
    const char *p = body;
    for (int i = 0; i < N; i++) {
        char li[64];
        snprintf(li, sizeof li, "<a href=\"f%05d\">f%05d</a>", i, i);
        const char *at = strstr(p, li);
        if (!at)
            iop_test_fail(__FILE__, __LINE__, "entry %d missing or out of order", i);
        p = at + strlen(li);
    }
    free(body);
    close(d);
    rm_tree(dir);
}

/* ---- configured headers (http_headers.c) ----------------------------------- */

IOP_TEST(header_check, be)
{
    (void)be;
    static const char *const good[] = {"X-A: b", "X-A:b", "x!#$%&'*+-.^_`|~9: v a l",
                                       "Cache-Control: max-age=60, public", "X: \xc3\xa9\t1"};
    static const char *const bad[] = {
        "",          "X-A",       ": v",     "X A: v",    "X-A:", "X-A:   ", "X-A: a\r\nB: c",
        "X-A: a\nb", "X-A: \x7f", "X(A): v", "X-A: a\x01"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (iop_http_header_check(good[i]) != 0)
            iop_test_fail(__FILE__, __LINE__, "'%s' refused", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (iop_http_header_check(bad[i]) != -EINVAL)
            iop_test_fail(__FILE__, __LINE__, "'%s' accepted", bad[i]);
    CHECK_EQ(iop_http_header_check(NULL), -EINVAL);
    CHECK_EQ(iop_http_header_value_check("text/plain; charset=utf-8"), 0);
    CHECK_EQ(iop_http_header_value_check(""), -EINVAL);
    CHECK_EQ(iop_http_header_value_check("a\rb"), -EINVAL);
}

/* test_thread_http_cache.c - the open-file cache that the blocking models'
 * connection threads share (src/proto/http.c), under ThreadSanitizer
 * (ctest -L thread).
 *
 * Threads with a worker each (as connection threads have) answer GETs for a
 * few files through the shared cache while another thread rewrites one of
 * them, so entries are taken, checked, replaced and released at once.  Every
 * answer must be a 200 with the file's fd; the fds held afterwards are the
 * cache's (one per file), not one per thread; freeing the server closes them
 * (the runner's fd-leak check). */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proto/http_srv.h"
#include "runner.h"

#define THREADS  8
#define ROUNDS   2000
#define NFILES   3
#define REWRITES 200

static const char *names[NFILES] = {"a.txt", "b.txt", "c.txt"};
static char root[64];
static atomic_int stop;
static atomic_int bad; /* answers that were not a 200 with a file */

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    CHECK(d);
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1;
}

/* Written aside, then renamed over the name: a reader never sees it empty. */
static void write_file(const char *name, const char *text)
{
    char path[128], tmp[140];
    snprintf(path, sizeof path, "%s/%s", root, name);
    snprintf(tmp, sizeof tmp, "%s.new", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CHECK(fd >= 0);
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    CHECK(rename(tmp, path) == 0);
}

struct job {
    iop_http *http;
    unsigned seed;
};

static void *client(void *arg)
{
    struct job *j = arg;
    struct http_worker w;
    http_worker_local(&w, j->http);
    w.cache = 1;
    w.shared = &j->http->shared;
    for (int i = 0; i < ROUNDS; i++) {
        char head[128];
        int n = snprintf(head, sizeof head, "GET /%s HTTP/1.1\r\nHost: t\r\n\r\n",
                         names[(j->seed + (unsigned)i) % NFILES]);
        struct http_req req;
        size_t scan = 0;
        if (http_parse_head(head, (size_t)n, 8192, &scan, &req) != n) {
            atomic_fetch_add(&bad, 1);
            continue;
        }
        struct http_resp r;
        http_respond(&w, &req, 0, 0, &r);
        if (r.status != 200 || r.fd < 0 || fcntl(r.fd, F_GETFD) < 0)
            atomic_fetch_add(&bad, 1);
        http_resp_done(&w, &r);
    }
    http_worker_fini(&w);
    return NULL;
}

/* Replaces b.txt again and again: the threads see the old file unlinked
 * (fstat) and replace its entry while others may still hold it. */
static void *rewriter(void *arg)
{
    (void)arg;
    for (int i = 0; i < REWRITES && !atomic_load(&stop); i++) {
        char text[64];
        snprintf(text, sizeof text, "version %d%*s\n", i, i % 17, "");
        write_file("b.txt", text);
        usleep(200);
    }
    return NULL;
}

IOP_TEST(shared_cache_threads, be)
{
    (void)be;
    snprintf(root, sizeof root, "/tmp/ioplex-test-cache-XXXXXX");
    CHECK(mkdtemp(root));
    for (int i = 0; i < NFILES; i++)
        write_file(names[i], "hello\n");
    int base = count_fds();
    iop_http *http;
    struct iop_http_config cfg = {.root = root};
    CHECK_OK(iop_http_new(&cfg, &http));

    pthread_t th[THREADS], rw;
    struct job jobs[THREADS];
    CHECK(pthread_create(&rw, NULL, rewriter, NULL) == 0);
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (struct job){http, (unsigned)i};
        CHECK(pthread_create(&th[i], NULL, client, &jobs[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_join(th[i], NULL) == 0);
    atomic_store(&stop, 1);
    CHECK(pthread_join(rw, NULL) == 0);
    CHECK_EQ(atomic_load(&bad), 0);
    /* The root and one entry per file: no thread holds anything now. */
    CHECK(count_fds() <= base + 1 + NFILES);
    iop_http_free(http);
    CHECK_EQ(count_fds(), base);
    for (int i = 0; i < NFILES; i++) {
        char path[128];
        snprintf(path, sizeof path, "%s/%s", root, names[i]);
        CHECK(unlink(path) == 0);
    }
    CHECK(rmdir(root) == 0);
}

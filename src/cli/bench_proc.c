/* bench_proc.c - a server's CPU time from /proc, for --server-pid. */
#include "cli/bench_common.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long long proc_ticks(long pid, int depth);

/* Ticks of pid's children, grandchildren... (thread by thread: children
 * hang off the thread that forked them). */
static long long children_ticks(long pid, int depth)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    long long sum = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char cpath[320];
        long child;
        if (e->d_name[0] == '.')
            continue;
        snprintf(cpath, sizeof cpath, "/proc/%ld/task/%s/children", pid, e->d_name);
        FILE *f = fopen(cpath, "re");
        if (!f)
            continue;
        while (fscanf(f, "%ld", &child) == 1) {
            long long v = proc_ticks(child, depth + 1);
            sum += v > 0 ? v : 0;
        }
        fclose(f);
    }
    closedir(d);
    return sum;
}

/* CPU clock ticks (user + system) of pid, of the children it has reaped
 * (a fork-per-connection server's) and of those still running; -1 when
 * pid is gone. */
static long long proc_ticks(long pid, int depth)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the name may hold anything but ')' last */
    unsigned long long ut, st;
    long long cut, cst;
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld", &ut,
                     &st, &cut, &cst) != 4)
        return -1;
    long long total = (long long)(ut + st) + cut + cst;
    return depth < 8 ? total + children_ticks(pid, depth) : total;
}

long long bench_proc_ticks(long pid)
{
    return proc_ticks(pid, 0);
}

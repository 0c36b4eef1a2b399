/* bench_report.c - the load generators' report: text or JSON (see
 * bench_common.h). */
#include "cli/bench_common.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"

/* ---- the report ------------------------------------------------------------------------- */

static const char *const err_names[BE_COUNT] = {
    [BE_CONNECT] = "connect",         [BE_CLOSED] = "closed",
    [BE_MISMATCH] = "mismatch",       [BE_EXTRA] = "extra_bytes",
    [BE_IDLE] = "idle_broken",        [BE_UNANSWERED] = "unanswered",
    [BE_BAD_REPLY] = "bad_response",  [BE_SHORT_BODY] = "short_body",
    [BE_UNSUPPORTED] = "unsupported",
};

void bench_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

/* v with thousands separators and dec decimals: 1,234,567.8 */
static const char *grp(char *buf, double v, int dec)
{
    char tmp[48];
    snprintf(tmp, sizeof tmp, "%.*f", dec, v);
    size_t ilen = strcspn(tmp, "."), o = 0;
    for (size_t i = 0; i < ilen; i++) {
        if (i && tmp[i - 1] != '-' && (ilen - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = tmp[i];
    }
    strcpy(buf + o, tmp + ilen);
    return buf;
}

static void totals(const struct bench_run *r, long long cpu0, long long cpu1,
                   struct bench_totals *tot)
{
    memset(tot, 0, sizeof *tot);
    hist_init(&tot->hist);
    for (int i = 0; i < r->nthreads; i++) {
        const struct bench_thread *t = &r->th[i];
        hist_merge(&tot->hist, &t->hist);
        tot->counted += t->counted;
        tot->bytes += t->bytes;
        tot->reopened += t->reopened;
        for (int k = 0; k < BE_COUNT; k++)
            tot->err[k] += t->err[k];
    }
    for (int k = 0; k < BE_COUNT; k++)
        tot->errors += tot->err[k];
    uint64_t end = bench_t_end(r);
    tot->secs = end > r->t_meas ? (double)(end - r->t_meas) / 1e9 : 0;
    if (r->o->server_pid && cpu0 >= 0 && cpu1 >= cpu0) {
        tot->server_cpu_s = (double)(cpu1 - cpu0) / (double)sysconf(_SC_CLK_TCK);
        tot->have_cpu = 1;
    }
}

static double rate_of(const struct bench_totals *tot)
{
    return tot->secs > 0 ? (double)tot->counted / tot->secs : 0;
}

/* "mismatch 2, closed 1" (or "" without errors), with sep between kinds */
void bench_err_kinds(const struct bench_totals *tot, FILE *f, int json)
{
    int n = 0;
    for (int k = 0; k < BE_COUNT; k++) {
        if (!tot->err[k])
            continue;
        if (json)
            fprintf(f, "%s\"%s\":%llu", n ? "," : "", err_names[k],
                    (unsigned long long)tot->err[k]);
        else
            fprintf(f, "%s%s %llu", n ? ", " : "", err_names[k], (unsigned long long)tot->err[k]);
        n++;
    }
}

static const char *backend_name(const struct bench_run *r)
{
    return r->th[0].backend_name ? r->th[0].backend_name : r->o->backend;
}

static void text_latency(const struct hist *h, FILE *f)
{
    static const double qs[] = {50, 90, 99, 99.9, 100};
    static const char *const names[] = {"p50", "p90", "p99", "p99.9", "max"};
    char b[64];
    fputs("  latency ", f);
    for (int i = 0; i < 5; i++)
        fprintf(f, "  %s %s", names[i], grp(b, (double)hist_percentile(h, qs[i]) / 1e3, 1));
    fprintf(f, " us  (mean %s)\n", grp(b, hist_mean(h) / 1e3, 1));
}

static void report_text(const struct bench_run *r, const struct bench_totals *tot, FILE *f)
{
    const struct bench_opts *o = r->o;
    const char *unit = r->proto->unit;
    char a[64], b[64], c[64];
    fprintf(f, "%s %s: %s\n", r->prog, o->target, r->what);
    fprintf(f, "  %ld connections (+%ld idle), %d thread%s, %s%s, ", o->conns, o->idle, r->nthreads,
            r->nthreads > 1 ? "s" : "", backend_name(r), o->edge ? " (edge)" : "");
    if (o->rate > 0)
        fprintf(f, "open loop at %s %s/s\n", grp(a, o->rate, 0), unit);
    else
        fputs("closed loop\n", f);
    fprintf(f, "  %.2f s counted after %.2f s warm-up\n", tot->secs, o->warmup);
    fprintf(f, "  %-10s%s   %s %s/s   %s MB/s\n", unit, grp(a, (double)tot->counted, 0),
            grp(b, rate_of(tot), 1), unit,
            grp(c, tot->secs > 0 ? (double)tot->bytes / tot->secs / 1e6 : 0, 2));
    text_latency(&tot->hist, f);
    fprintf(f, "  errors    %llu", (unsigned long long)tot->errors);
    if (tot->errors) {
        fputs(" (", f);
        bench_err_kinds(tot, f, 0);
        fputc(')', f);
    }
    fputc('\n', f);
    if (r->proto->report)
        r->proto->report(r, 0, f);
    if (tot->have_cpu && tot->counted)
        fprintf(f, "  server    %.2f us CPU per %s (%.0f %% of a core)\n",
                tot->server_cpu_s * 1e6 / (double)tot->counted, r->proto->per,
                tot->secs > 0 ? tot->server_cpu_s / tot->secs * 100 : 0);
}

static void json_latency(const struct hist *h, FILE *f)
{
    fprintf(f,
            ",\"latency_us\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f,"
            "\"min\":%.3f,\"mean\":%.3f}",
            (double)hist_percentile(h, 50) / 1e3, (double)hist_percentile(h, 90) / 1e3,
            (double)hist_percentile(h, 99) / 1e3, (double)hist_percentile(h, 99.9) / 1e3,
            (double)h->max / 1e3, h->n ? (double)h->min / 1e3 : 0, hist_mean(h) / 1e3);
}

static void report_json(const struct bench_run *r, const struct bench_totals *tot, FILE *f)
{
    const struct bench_opts *o = r->o;
    fprintf(f, "{\"bench\":\"%s\",\"target\":", r->proto->name);
    bench_json_str(f, o->target);
    fprintf(f,
            ",\"backend\":\"%s\",\"edge\":%s,\"spin\":%s,\"threads\":%d,\"conns\":%ld,"
            "\"idle\":%ld",
            backend_name(r), o->edge ? "true" : "false", o->no_spin ? "false" : "true", r->nthreads,
            o->conns, o->idle);
    if (o->rate > 0)
        fprintf(f, ",\"rate_target\":%.3f", o->rate);
    else
        fputs(",\"rate_target\":null", f);
    fprintf(f, ",\"warmup_s\":%.3f,\"duration_s\":%.6f,\"%s\":%llu,\"rate\":%.3f,\"mb_per_s\":%.6f",
            o->warmup, tot->secs, r->proto->unit, (unsigned long long)tot->counted, rate_of(tot),
            tot->secs > 0 ? (double)tot->bytes / tot->secs / 1e6 : 0);
    json_latency(&tot->hist, f);
    fprintf(f, ",\"errors\":%llu,\"error_kinds\":{", (unsigned long long)tot->errors);
    bench_err_kinds(tot, f, 1);
    fputc('}', f);
    if (r->proto->report)
        r->proto->report(r, 1, f);
    if (tot->have_cpu && tot->counted)
        fprintf(f, ",\"server_cpu_us_per_req\":%.4f,\"server_cpu_pct\":%.2f",
                tot->server_cpu_s * 1e6 / (double)tot->counted,
                tot->secs > 0 ? tot->server_cpu_s / tot->secs * 100 : 0);
    else if (o->server_pid)
        fputs(",\"server_cpu_us_per_req\":null,\"server_cpu_pct\":null", f);
    fputs("}\n", f);
}

int bench_report(const struct bench_run *r, long long cpu0, long long cpu1)
{
    struct bench_totals tot;
    totals(r, cpu0, cpu1, &tot);
    if (r->o->json)
        report_json(r, &tot, stdout);
    else
        report_text(r, &tot, stdout);
    fflush(stdout);
    if (r->o->server_pid && !tot.have_cpu)
        fprintf(stderr, "%s: warning: no CPU figures for --server-pid %ld (gone?)\n", r->prog,
                r->o->server_pid);
    if (tot.errors) {
        fprintf(stderr, "%s: FAILED: %llu errors (", r->prog, (unsigned long long)tot.errors);
        bench_err_kinds(&tot, stderr, 0);
        fputs(")\n", stderr);
        return CLI_FAIL;
    }
    if (!tot.counted) {
        fprintf(stderr, "%s: FAILED: no %s completed in the counted time\n", r->prog,
                r->proto->unit);
        return CLI_FAIL;
    }
    return CLI_OK;
}

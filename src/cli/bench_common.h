/* bench_common.h - what the load generators (`ioplex bench echo`, `ioplex
 * bench http`) share: options, worker threads, the run's timeline, pacing,
 * connections, accounting and the report.
 *
 * A run: T worker threads, each with its own loop (uring by default), its
 * share of the connections and its own histogram.  Each thread connects its
 * connections (the idle ones first) and lets the protocol prove them live;
 * when every thread is ready the clock starts: `warmup` seconds not counted,
 * then `duration` seconds counted (a request counts when its answer is
 * complete inside that window), then no new requests and at most
 * BENCH_DRAIN_MS for those still in flight, which count as errors
 * ("unanswered") if they never come back.
 *
 * Closed loop (default): a connection sends its next request as soon as it
 * may (one in flight for echo, --pipeline P for http), and latency runs from
 * the send.  Open loop (--rate R): connection i of C sends at
 * t0 + i/R + k*C/R, k = 0, 1, ...; when it is behind (the answer came late)
 * it sends at once, and latency runs from the scheduled time, so a server
 * that stalls cannot hide the queue it built (coordinated omission).
 *
 * A protocol is a struct bench_proto: its connection type starts with a
 * struct bconn, its send() issues one request, and its stream read callback
 * calls bench_done() for each complete answer, then bench_pump() for more.
 */
#ifndef IOP_CLI_BENCH_COMMON_H
#define IOP_CLI_BENCH_COMMON_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "cli/hist.h"
#include "cli/opt.h"
#include "ioplex/loop.h"
#include "ioplex/net.h"
#include "ioplex/stream.h"

#define BENCH_DRAIN_MS 5000 /* after the window: how long answers may take */
#define BENCH_NOPTS    15   /* entries bench_opts_table() writes */

/* ---- options ------------------------------------------------------------ */

struct bench_opts {
    long conns, idle, threads, server_pid;
    double duration, warmup, rate; /* seconds, seconds, requests/s (0: closed loop) */
    const char *backend;
    int edge, no_spin, json, help;
    const char *target; /* ADDR or URL: the one positional */
    /* TLS: --tls (echo) or an https:// URL; --cacert FILE, --insecure */
    int tls, insecure;
    const char *cacert;
    char tls_name[256]; /* SNI and the name checked: the target's host */
    const char *alpn;   /* "http/1.1" for http */
};

void bench_opts_init(struct bench_opts *o);
/* Write the BENCH_NOPTS common entries (no terminator) to tab. */
size_t bench_opts_table(struct bench_opts *o, struct opt *tab);
/* The common options' lines for --help. */
void bench_opts_usage(FILE *f);
/* After opt_parse: exactly one positional (the target: noun names it in
 * messages, "ADDR"), backend known, --edge possible, --server-pid a live
 * process; more threads than connections become one per connection.
 * 0, or -1 after one line on stderr. */
int bench_opts_check(const char *prog, const char *noun, struct bench_opts *o, int npos,
                     char **pos);

/* ---- errors ------------------------------------------------------------- */

enum bench_err {
    BE_CONNECT,     /* connect failed */
    BE_CLOSED,      /* the server closed or reset a connection with work owed */
    BE_MISMATCH,    /* echo: a byte differs from what was sent */
    BE_EXTRA,       /* echo: more bytes came back than were sent */
    BE_IDLE,        /* an idle connection got bytes, or was closed */
    BE_UNANSWERED,  /* still owed an answer when the drain time ran out */
    BE_BAD_REPLY,   /* http: not a response we can parse */
    BE_SHORT_BODY,  /* http: the connection ended inside a body */
    BE_UNSUPPORTED, /* http: a framing we do not read (unknown Transfer-Encoding) */
    BE_COUNT
};

/* ---- connections and threads --------------------------------------------- */

struct bench_thread;

enum bconn_state { BC_NEW, BC_CONNECTING, BC_OPEN, BC_DEAD };

/* The first member of every protocol's connection. */
struct bconn {
    struct bench_thread *t;
    iop_stream *s; /* while BC_OPEN */
    iop_io cw;     /* while BC_CONNECTING: waits for the connect */
    uint32_t id;   /* 0.. over all threads; active ones after the idle */
    uint8_t idle;  /* one of the --idle connections */
    uint8_t state; /* enum bconn_state */
    uint8_t ready; /* counted as ready in the setup phase */
    unsigned inflight, cap;
    uint64_t next_due; /* open loop: when the next request is due (ns) */
    size_t hslot;      /* place in the thread's pacing heap, or SIZE_MAX */
};

struct bench_run;

struct bench_thread {
    struct bench_run *run;
    int index;
    pthread_t tid;
    iop_loop *loop;
    iop_stream_ctx *ctx;
    char *conns; /* nconns protocol connections of conn_size bytes */
    size_t nconns, nidle;
    size_t next_connect, connecting, setup_left;
    void *pdata; /* the protocol's per-thread state */
    /* accounting: counted = inside the window */
    struct hist hist;
    uint64_t counted, bytes, done;
    uint64_t err[BE_COUNT];
    uint64_t reopened;
    uint64_t inflight;
    _Atomic uint64_t progress, perrors; /* done and errors, for the main thread */
    int setup_err;                      /* negative errno of a failed setup */
    int setup_running;                  /* the loop runs for the setup phase */
    int started;                        /* the window's clock runs */
    int finished;                       /* the run is over: leave the loop */
    int stopping;                       /* past the window: no new requests */
    /* open loop: connections waiting for their due time, earliest first */
    struct bconn **heap;
    size_t nheap, capheap;
    int tfd;
    iop_io tio;
    uint64_t armed;  /* when tfd fires; 0: disarmed */
    int pacing;      /* inside the timerfd's callback */
    iop_timer timer; /* setup deadline, then the window's end, then the drain */
    iop_async wake;  /* the main thread moved the end (SIGINT) */
    int wake_live;   /* wake may be sent to (under the run's wake_mu) */
    const char *backend_name;
};

/* ---- protocols ------------------------------------------------------------ */

struct bench_totals;

struct bench_proto {
    const char *name; /* "echo", "http" */
    const char *unit; /* "msgs", "requests" */
    const char *per;  /* "msg", "req" (server CPU per ...) */
    size_t conn_size; /* sizeof the protocol's connection */
    unsigned cap;     /* requests in flight per connection */
    size_t read_size; /* stream read buffer; 0: the stream's default */
    iop_stream_read_cb on_read;
    /* Optional: per-thread state in t->pdata; 0 or -errno.  thread_fini
     * runs when the thread ends; pdata itself is freed (free()) after the
     * report, which may still read it. */
    int (*thread_init)(struct bench_thread *t);
    void (*thread_fini)(struct bench_thread *t);
    /* A connection is open (its stream reading): in the setup phase call
     * bench_ready(c) once it is proven live; later, carry on (bench_pump). */
    void (*on_open)(struct bconn *c);
    /* Issue one request whose latency runs from start (ns). */
    void (*send)(struct bconn *c, uint64_t start);
    /* Optional: extra lines (text) or members (json) of the report. */
    void (*report)(const struct bench_run *r, int json, FILE *f);
};

/* What the main thread and the report see. */
struct bench_run {
    const char *prog;
    const struct bench_opts *o;
    const struct bench_proto *proto;
    const void *pconf; /* the protocol's parsed configuration */
    iop_addr addr;
    const char *what; /* one line describing the load, for the report */
    int kind;         /* backend */
    unsigned loop_flags;
    int nthreads;
    struct bench_thread *th;
    pthread_barrier_t ready, go;
    atomic_int abort;
    uint64_t t0, t_meas;
    _Atomic uint64_t t_end;
    uint64_t interval;       /* open loop: ns between one connection's requests */
    double step;             /* open loop: ns between consecutive connections' */
    int done_fd;             /* eventfd: a worker finished */
    pthread_mutex_t wake_mu; /* iop_async_send must not race iop_async_stop */
    iop_tls_ctx *tls;        /* client context when the target speaks TLS */
};

/* Merged over the threads, after the run. */
struct bench_totals {
    struct hist hist;
    uint64_t counted, bytes, errors, reopened;
    uint64_t err[BE_COUNT];
    double secs; /* the counted window */
    double server_cpu_s;
    int have_cpu;
};

/* Run the load; returns the exit status (0, 1 any error, 2 the backend
 * cannot start).  Prints the report. */
int bench_run(const char *prog, const struct bench_opts *o, const struct bench_proto *p,
              const void *pconf, const iop_addr *addr, const char *what);

/* ---- for the protocols ------------------------------------------------------ */

uint64_t bench_now(void); /* CLOCK_MONOTONIC, ns */
/* The setup phase: c is proven live. */
void bench_ready(struct bconn *c);
/* Send what c may send now (closed loop) or what is due (open loop). */
void bench_pump(struct bconn *c);
/* One answer is complete: it counts if it ended inside the window. */
void bench_done(struct bconn *c, uint64_t start, uint64_t bytes);
/* Count an error; with close, also close c (its requests in flight are
 * given up). */
void bench_error(struct bench_thread *t, int kind);
void bench_fail(struct bconn *c, int kind);
/* Give up c's requests in flight (they will never be answered). */
void bench_drop(struct bconn *c);
/* Close c without an error, keeping its requests in flight (to send again
 * on the next connection); bench_reopen() connects it again and counts it. */
void bench_close(struct bconn *c);
void bench_reopen(struct bconn *c);
/* The thread's connection i. */
struct bconn *bench_conn(const struct bench_thread *t, size_t i);
/* JSON string (quotes added, escaped) */
void bench_json_str(FILE *f, const char *s);

/* ---- between the bench_*.c files ---------------------------------------- */

uint64_t bench_t_end(const struct bench_run *r); /* the counted window's end, ns */
/* Allocate thread t's connections, numbered from first_active (active
 * ones) and first_idle (idle ones): 0 or -ENOMEM. */
int bench_thread_conns(struct bench_thread *t, uint32_t first_active, uint32_t first_idle);
/* A worker thread: set up, pass the start gate, run, tear down. */
void *bench_thread_main(void *arg);
/* Wait for every started worker at the gate; then fix the timeline (unless
 * a worker failed) and let them all go. */
void bench_gate_open(struct bench_run *r, int started);
/* CPU clock ticks of pid and its children, living and reaped; -1: gone. */
long long bench_proc_ticks(long pid);
/* The report of a finished run (cpu0, cpu1: server ticks at the counted
 * window's ends, -1 unknown): CLI_OK, or CLI_FAIL after errors. */
int bench_report(const struct bench_run *r, long long cpu0, long long cpu1);
/* "kind N, kind N" of the errors counted in tot (json: as JSON members). */
void bench_err_kinds(const struct bench_totals *tot, FILE *f, int json);

#endif

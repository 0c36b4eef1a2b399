/* bench.c - `ioplex bench`: the load generators and the loop benchmark. */
#include "cli/cli.h"

static const struct cli_cmd bench_commands[] = {
    {"echo", cmd_bench_echo, "load an echo server; msgs/s and latency percentiles"},
    {"http", cmd_bench_http, "load an HTTP server; req/s and latency percentiles"},
    {"loop", cmd_bench_loop, "event-loop overhead per backend (libevent bench.c method)"},
    {NULL, NULL, NULL},
};

static const char usage[] = "usage: ioplex bench echo|http|loop [options]"
                            "   (ioplex bench COMMAND --help for more)\n"
                            "Benchmarks report numbers; they never pass or fail on speed.\n";

int cmd_bench(int argc, char **argv)
{
    return cli_dispatch("ioplex bench", usage, bench_commands, argc, argv);
}

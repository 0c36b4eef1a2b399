/* cli.h - what the files of the ioplex program share.
 *
 * Each subcommand is a function run(argc, argv) with argv[0] its own name,
 * returning the process exit status: 0 success, 1 failure at run time,
 * 2 bad command line (one line on stderr), 3 skipped (benchmarks only). */
#ifndef IOP_CLI_CLI_H
#define IOP_CLI_CLI_H

#include <stdio.h>

enum {
    CLI_OK = 0,
    CLI_FAIL = 1,
    CLI_USAGE = 2,
    CLI_SKIP = 3,
};

struct cli_cmd {
    const char *name;
    int (*run)(int argc, char **argv); /* NULL: not in this build yet */
    const char *summary;
};

/* A command group ("ioplex", "ioplex bench"): argv[0] is the group's name,
 * argv[1] a subcommand from cmds (a table ended by a NULL name), or -h /
 * --help, which prints usage and the command list on stdout. */
int cli_dispatch(const char *prog, const char *usage, const struct cli_cmd *cmds, int argc,
                 char **argv);

int cmd_echo(int argc, char **argv);
int cmd_http(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_bench_loop(int argc, char **argv);
int cmd_bench_echo(int argc, char **argv);
int cmd_bench_http(int argc, char **argv);

#endif

/* main.c - the ioplex program: dispatch to a subcommand. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "ioplex/common.h"

/* A subcommand that a later issue brings has run == NULL until then. */
static const struct cli_cmd commands[] = {
    {"http", cmd_http, "serve a directory over HTTP/1.1"},
    {"echo", cmd_echo, "echo server: raw bytes, lines or length-prefixed frames"},
    {"bench", cmd_bench, "load generators and the event-loop benchmark"},
    {NULL, NULL, NULL},
};

static const char usage[] = "usage: ioplex COMMAND [options]   (ioplex COMMAND --help for more)\n"
                            "       ioplex --help | --version\n";

static void list_commands(const struct cli_cmd *cmds)
{
    printf("\ncommands:\n");
    for (const struct cli_cmd *c = cmds; c->name; c++)
        printf("  %-8s %s%s\n", c->name, c->summary, c->run ? "" : " (not in this build yet)");
}

static int is_help(const char *arg)
{
    return !strcmp(arg, "-h") || !strcmp(arg, "--help");
}

int cli_dispatch(const char *prog, const char *use, const struct cli_cmd *cmds, int argc,
                 char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "%s: missing command (try '%s --help')\n", prog, prog);
        return CLI_USAGE;
    }
    const char *name = argv[1];
    if (is_help(name)) {
        fputs(use, stdout);
        list_commands(cmds);
        return CLI_OK;
    }
    for (const struct cli_cmd *c = cmds; c->name; c++) {
        if (strcmp(c->name, name))
            continue;
        if (c->run)
            return c->run(argc - 1, argv + 1);
        const char *group = strchr(prog, ' '); /* "ioplex bench" -> "bench " */
        fprintf(stderr, "ioplex: '%s%s%s' is not available in this build yet\n",
                group ? group + 1 : "", group ? " " : "", name);
        return CLI_USAGE;
    }
    fprintf(stderr, "%s: unknown %s '%s' (try '%s --help')\n", prog,
            name[0] == '-' ? "option" : "command", name, prog);
    return CLI_USAGE;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V"))) {
        printf("ioplex %s\n", iop_version());
        return CLI_OK;
    }
    return cli_dispatch("ioplex", usage, commands, argc, argv);
}

/* opt.h - the command-line option parser of the ioplex program.
 *
 * A subcommand describes its options in a table, terminated by an entry
 * whose long name and short name are both empty:
 *
 *     static const struct opt opts[] = {
 *         {"backend", 'b', OPT_STR, &backend},
 *         {"edge", 0, OPT_FLAG, &edge},
 *         {"rounds", 'r', OPT_INT, &rounds, 1, 10000},
 *         {"listen", 'l', OPT_FUNC, &listeners, 0, 0, add_listener},
 *         {0},
 *     };
 *
 * Accepted spellings: `--name=value`, `--name value`, `-n value`, `-nvalue`;
 * flags take no value.  `--` ends the options.  Arguments that are not
 * options (positionals) are moved, in order, to the front of argv.
 *
 * On a bad command line opt_parse() prints exactly one line on stderr,
 * naming the program and the option, and returns -1: the caller exits 2.
 */
#ifndef IOP_CLI_OPT_H
#define IOP_CLI_OPT_H

enum opt_kind {
    OPT_FLAG, /* int *: set to 1 */
    OPT_INT,  /* long *: a decimal integer from min to max */
    OPT_STR,  /* const char **: the value, pointing into argv */
    OPT_FUNC, /* fn: called with each value and dest (repeatable options) */
};

/* Called with the option's dest.  Returns 0, or -1 after printing one line
 * on stderr. */
typedef int (*opt_func_t)(const char *prog, const char *value, void *dest);

struct opt {
    const char *name; /* long name without "--", or NULL */
    char short_name;  /* or 0 */
    enum opt_kind kind;
    void *dest;    /* see enum opt_kind; OPT_FUNC: passed to fn */
    long min, max; /* OPT_INT only */
    opt_func_t fn; /* OPT_FUNC only */
};

/* Parse argv[1..argc-1] (argv[0] is not looked at).  prog names the
 * command in messages ("ioplex bench loop").  On success returns the number
 * of positionals, now in argv[0..n-1]; on error -1 (one line printed). */
int opt_parse(const char *prog, const struct opt *opts, int argc, char **argv);

/* Strict decimal integer in [min, max]: 0 and *out set, or -1. */
int opt_int(const char *s, long min, long max, long *out);

#endif

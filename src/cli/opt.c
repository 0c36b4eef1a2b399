/* opt.c - the command-line option parser (see opt.h). */
#include "cli/opt.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int opt_int(const char *s, long min, long max, long *out)
{
    char *end;
    if (!*s)
        return -1;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static const struct opt *find_long(const struct opt *opts, const char *name, size_t len)
{
    for (const struct opt *o = opts; o->name || o->short_name; o++)
        if (o->name && strlen(o->name) == len && !strncmp(o->name, name, len))
            return o;
    return NULL;
}

static const struct opt *find_short(const struct opt *opts, char c)
{
    for (const struct opt *o = opts; o->name || o->short_name; o++)
        if (o->short_name == c)
            return o;
    return NULL;
}

/* Store value (NULL for a flag) into o.  spell/len: the option as typed. */
static int store(const char *prog, const struct opt *o, const char *spell, int len,
                 const char *value)
{
    switch (o->kind) {
    case OPT_FLAG:
        *(int *)o->dest = 1;
        return 0;
    case OPT_INT:
        if (opt_int(value, o->min, o->max, (long *)o->dest) == 0)
            return 0;
        fprintf(stderr, "%s: option '%.*s' expects an integer from %ld to %ld, not '%s'\n", prog,
                len, spell, o->min, o->max, value);
        return -1;
    case OPT_STR:
        *(const char **)o->dest = value;
        return 0;
    case OPT_FUNC:
        return o->fn(prog, value, o->dest);
    }
    return -1;
}

static int unknown(const char *prog, const char *arg, int len)
{
    fprintf(stderr, "%s: unknown option '%.*s' (try '%s --help')\n", prog, len, arg, prog);
    return -1;
}

/* One option argument at argv[*i]; may consume argv[*i + 1] as its value. */
static int parse_one(const char *prog, const struct opt *opts, int argc, char **argv, int *i)
{
    const char *arg = argv[*i];
    const struct opt *o;
    const char *value = NULL; /* a value attached to the option itself */
    int len;
    if (arg[1] == '-') {
        const char *eq = strchr(arg + 2, '=');
        len = eq ? (int)(eq - arg) : (int)strlen(arg);
        o = find_long(opts, arg + 2, (size_t)len - 2);
        value = eq ? eq + 1 : NULL;
    } else {
        len = 2;
        o = find_short(opts, arg[1]);
        value = arg[2] ? arg + 2 : NULL;
    }
    if (!o)
        return unknown(prog, arg, len);
    if (o->kind == OPT_FLAG) {
        if (!value)
            return store(prog, o, arg, len, NULL);
        fprintf(stderr, "%s: option '%.*s' takes no value\n", prog, len, arg);
        return -1;
    }
    if (!value) {
        if (*i + 1 >= argc) {
            fprintf(stderr, "%s: option '%.*s' needs a value\n", prog, len, arg);
            return -1;
        }
        value = argv[++*i];
    }
    return store(prog, o, arg, len, value);
}

int opt_parse(const char *prog, const struct opt *opts, int argc, char **argv)
{
    int npos = 0;
    int i = 1;
    for (; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--")) {
            i++;
            break;
        }
        if (arg[0] != '-' || arg[1] == '\0') { /* "-" alone is a positional: stdin */
            argv[npos++] = argv[i];
            continue;
        }
        if (parse_one(prog, opts, argc, argv, &i) < 0)
            return -1;
    }
    while (i < argc)
        argv[npos++] = argv[i++];
    return npos;
}

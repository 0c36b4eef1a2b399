/* addr.c - the address forms of SPEC §2: parse them, format them back.
 *
 * The parser works on (pointer, length) and never reads past the length, so
 * the fuzzer can hand it raw bytes; copies into small NUL-terminated
 * buffers are made only for the libc calls that need them (inet_pton,
 * getaddrinfo), after the length has been checked. */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>

#include "ioplex/net.h"

#define HOST_MAX 253 /* longest DNS name */
#define SUN_MAX  (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Decimal, digits only.  Non-digits anywhere are syntax (-EINVAL) even when
 * the digits before them are already out of range. */
static int parse_u32(const char *s, size_t n, uint32_t max, uint32_t *out)
{
    if (n == 0)
        return -EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return -EINVAL;
        if (v <= max)
            v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > max)
        return -ERANGE;
    *out = (uint32_t)v;
    return 0;
}

static int parse_port(const char *s, size_t n, uint16_t *out)
{
    uint32_t v;
    int rc = parse_u32(s, n, 65535, &v);
    if (rc == 0)
        *out = (uint16_t)v;
    return rc;
}

/* A name getaddrinfo may look up: letters, digits, '-', '_', '.'. */
static int is_name(const char *s, size_t n)
{
    if (n == 0 || n > HOST_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!(is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' ||
              c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

/* Host names never end in an all-digit label (RFC 3696 §2), and "0x..." is
 * inet_aton's hex: text like "1.2.3" or "0x7f.1" is a malformed IPv4 literal
 * that getaddrinfo would happily turn into some address.  Refuse it. */
static int looks_numeric(const char *s, size_t n)
{
    const char *dot = memrchr(s, '.', n);
    const char *label = dot ? dot + 1 : s;
    size_t len = (size_t)(s + n - label);
    if (len == 0) /* "example.com.": a rooted name */
        return 0;
    if (len >= 2 && label[0] == '0' && (label[1] == 'x' || label[1] == 'X'))
        return 1;
    for (size_t i = 0; i < len; i++)
        if (!is_digit(label[i]))
            return 0;
    return 1;
}

static int kind_socktype(int kind)
{
    return kind == IOP_ADDR_UDP ? SOCK_DGRAM : SOCK_STREAM;
}

static int gai_errno(int rc)
{
    switch (rc) {
    case EAI_NONAME:
#ifdef EAI_NODATA
    case EAI_NODATA:
#endif
        return -ENXIO;
    case EAI_AGAIN:
        return -EAGAIN;
    case EAI_MEMORY:
        return -ENOMEM;
#ifdef EAI_ADDRFAMILY
    case EAI_ADDRFAMILY:
#endif
    case EAI_FAMILY:
        return -EAFNOSUPPORT;
    case EAI_SYSTEM:
        return errno ? -errno : -EIO;
    default:
        return -EINVAL;
    }
}

/* Resolve a name: the first IPv4 address, else the first IPv6 one.  IPv4
 * first because `localhost` must mean 127.0.0.1, the address the defaults
 * and most clients use, whatever order /etc/gai.conf prefers. */
static int resolve(const char *name, int kind, uint16_t port, iop_addr *out)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = kind_socktype(kind);
    int rc = getaddrinfo(name, NULL, &hints, &res);
    if (rc != 0)
        return gai_errno(rc);
    const struct addrinfo *pick = NULL;
    for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET && ai->ai_addrlen == sizeof(struct sockaddr_in)) {
            pick = ai;
            break;
        }
        if (!pick && ai->ai_family == AF_INET6 && ai->ai_addrlen == sizeof(struct sockaddr_in6))
            pick = ai;
    }
    if (pick) {
        memcpy(&out->u, pick->ai_addr, pick->ai_addrlen);
        out->len = pick->ai_addrlen;
        if (pick->ai_family == AF_INET)
            out->u.in4.sin_port = htons(port);
        else
            out->u.in6.sin6_port = htons(port);
    }
    freeaddrinfo(res);
    return pick ? 0 : -EAFNOSUPPORT;
}

/* HOST of HOST:PORT (not bracketed): empty, dotted quad, or a name. */
static int parse_host4(const char *h, size_t n, unsigned flags, int kind, uint16_t port,
                       iop_addr *out)
{
    if (n == 0 || looks_numeric(h, n)) {
        char buf[INET_ADDRSTRLEN];
        out->u.in4.sin_family = AF_INET;
        out->u.in4.sin_port = htons(port);
        out->len = sizeof out->u.in4;
        if (n == 0) { /* every interface of both families: see iop_listen */
            out->u.in4.sin_addr.s_addr = htonl(INADDR_ANY);
            out->dual = 1;
            return 0;
        }
        if (n >= sizeof buf)
            return -EINVAL;
        memcpy(buf, h, n);
        buf[n] = '\0';
        return inet_pton(AF_INET, buf, &out->u.in4.sin_addr) == 1 ? 0 : -EINVAL;
    }
    if (!is_name(h, n))
        return -EINVAL;
    if (flags & IOP_ADDR_NUMERIC)
        return -ENXIO;
    char name[HOST_MAX + 1];
    memcpy(name, h, n);
    name[n] = '\0';
    return resolve(name, kind, port, out);
}

/* The zone after '%' in [V6%ZONE]: a number, or an interface name. */
static int parse_zone(const char *z, size_t n, unsigned flags, uint32_t *out)
{
    if (n == 0)
        return -EINVAL;
    if (is_digit(z[0]))
        return parse_u32(z, n, UINT32_MAX, out) == 0 ? 0 : -EINVAL;
    if (n >= IF_NAMESIZE || !is_name(z, n))
        return -EINVAL;
    if (flags & IOP_ADDR_NUMERIC)
        return -ENXIO;
    char name[IF_NAMESIZE];
    memcpy(name, z, n);
    name[n] = '\0';
    unsigned idx = if_nametoindex(name);
    if (idx == 0)
        return -ENXIO;
    *out = idx;
    return 0;
}

/* The inside of [V6] or [V6%ZONE]. */
static int parse_host6(const char *h, size_t n, unsigned flags, uint16_t port, iop_addr *out)
{
    const char *pct = memchr(h, '%', n);
    size_t alen = pct ? (size_t)(pct - h) : n;
    char buf[INET6_ADDRSTRLEN];
    if (alen == 0 || alen >= sizeof buf)
        return -EINVAL;
    memcpy(buf, h, alen);
    buf[alen] = '\0';
    out->u.in6.sin6_family = AF_INET6;
    out->u.in6.sin6_port = htons(port);
    out->len = sizeof out->u.in6;
    if (inet_pton(AF_INET6, buf, &out->u.in6.sin6_addr) != 1)
        return -EINVAL;
    if (!pct)
        return 0;
    return parse_zone(pct + 1, n - alen - 1, flags, &out->u.in6.sin6_scope_id);
}

/* HOST:PORT, :PORT or [V6]:PORT. */
static int parse_inet(const char *s, size_t n, unsigned flags, int kind, iop_addr *out)
{
    const char *host, *colon;
    size_t hlen;
    int v6 = n > 0 && s[0] == '[';
    if (v6) {
        const char *close = memchr(s, ']', n);
        if (!close)
            return -EINVAL;
        host = s + 1;
        hlen = (size_t)(close - host);
        colon = close + 1;
        if (colon == s + n || *colon != ':')
            return -EINVAL;
    } else {
        colon = memchr(s, ':', n);
        if (!colon)
            return -EINVAL;
        host = s;
        hlen = (size_t)(colon - s);
    }
    /* One colon only: a bare IPv6 address ("::1:80") is ambiguous. */
    const char *port = colon + 1;
    size_t plen = (size_t)(s + n - port);
    if (memchr(port, ':', plen))
        return -EINVAL;
    uint16_t p;
    int rc = parse_port(port, plen, &p);
    if (rc < 0)
        return rc;
    out->kind = kind;
    if (v6)
        return parse_host6(host, hlen, flags, p, out);
    return parse_host4(host, hlen, flags, kind, p, out);
}

/* PATH or @NAME after "unix:". */
static int parse_unix(const char *s, size_t n, iop_addr *out)
{
    int abstract = n > 0 && s[0] == '@';
    size_t len = abstract ? n - 1 : n;
    if (len == 0)
        return -EINVAL;
    if (len > SUN_MAX)
        return -ENAMETOOLONG;
    out->kind = IOP_ADDR_UNIX;
    out->u.un.sun_family = AF_UNIX;
    /* sun_path[0] stays '\0' for an abstract name, which follows it; a path
     * keeps its NUL inside len, as getsockname() reports it. */
    memcpy(out->u.un.sun_path + abstract, s + abstract, len);
    out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
    return 0;
}

static int has_prefix(const char *s, size_t n, const char *prefix, size_t plen)
{
    return n >= plen && memcmp(s, prefix, plen) == 0;
}

int iop_addr_parse_len(const char *text, size_t len, unsigned flags, iop_addr *out)
{
    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof *out);
    if (!text || len == 0 || memchr(text, '\0', len))
        return -EINVAL;
    int rc;
    if (has_prefix(text, len, "unix:", 5))
        rc = parse_unix(text + 5, len - 5, out);
    else if (has_prefix(text, len, "udp:", 4))
        rc = parse_inet(text + 4, len - 4, flags, IOP_ADDR_UDP, out);
    else
        rc = parse_inet(text, len, flags, IOP_ADDR_TCP, out);
    if (rc < 0)
        memset(out, 0, sizeof *out);
    return rc;
}

int iop_addr_parse(const char *text, iop_addr *out)
{
    return iop_addr_parse_len(text, text ? strlen(text) : 0, 0, out);
}

int iop_addr_parse_numeric(const char *text, iop_addr *out)
{
    return iop_addr_parse_len(text, text ? strlen(text) : 0, IOP_ADDR_NUMERIC, out);
}

/* ---- formatting ------------------------------------------------------- */

static int format_unix(const iop_addr *a, char *tmp, size_t size)
{
    const size_t off = offsetof(struct sockaddr_un, sun_path);
    if (a->len < off || a->len > sizeof a->u.un)
        return -EINVAL;
    size_t n = a->len - off;
    const char *p = a->u.un.sun_path;
    if (n == 0)
        return snprintf(tmp, size, "unix:");
    if (p[0] == '\0') { /* abstract: exactly n - 1 bytes, which may not hold a NUL */
        if (n == 1 || memchr(p + 1, '\0', n - 1))
            return -EINVAL;
        return snprintf(tmp, size, "unix:@%.*s", (int)(n - 1), p + 1);
    }
    /* A path: up to its NUL, which the kernel may leave out at full length. */
    return snprintf(tmp, size, "unix:%.*s", (int)strnlen(p, n), p);
}

static int format_inet(const iop_addr *a, char *tmp, size_t size)
{
    const char *prefix = a->kind == IOP_ADDR_UDP ? "udp:" : "";
    char host[INET6_ADDRSTRLEN];
    if (a->u.sa.sa_family == AF_INET && a->len >= sizeof a->u.in4 && a->dual) {
        if (a->u.in4.sin_addr.s_addr != htonl(INADDR_ANY))
            return -EINVAL; /* no text means "this IPv4 address, and IPv6 too" */
        return snprintf(tmp, size, "%s:%u", prefix, ntohs(a->u.in4.sin_port));
    }
    if (a->u.sa.sa_family == AF_INET && a->len >= sizeof a->u.in4) {
        if (!inet_ntop(AF_INET, &a->u.in4.sin_addr, host, sizeof host))
            return -EINVAL;
        return snprintf(tmp, size, "%s%s:%u", prefix, host, ntohs(a->u.in4.sin_port));
    }
    if (a->u.sa.sa_family == AF_INET6 && a->len >= sizeof a->u.in6) {
        if (!inet_ntop(AF_INET6, &a->u.in6.sin6_addr, host, sizeof host))
            return -EINVAL;
        char zone[16] = "";
        if (a->u.in6.sin6_scope_id)
            snprintf(zone, sizeof zone, "%%%u", (unsigned)a->u.in6.sin6_scope_id);
        return snprintf(tmp, size, "%s[%s%s]:%u", prefix, host, zone, ntohs(a->u.in6.sin6_port));
    }
    return -EINVAL;
}

int iop_addr_format(const iop_addr *addr, char *buf, size_t buflen)
{
    if (buf && buflen > 0)
        buf[0] = '\0';
    if (!addr || !buf)
        return -EINVAL;
    char tmp[IOP_ADDR_STRLEN];
    int n;
    if (addr->kind == IOP_ADDR_UNIX && addr->u.sa.sa_family == AF_UNIX)
        n = format_unix(addr, tmp, sizeof tmp);
    else if (addr->kind == IOP_ADDR_TCP || addr->kind == IOP_ADDR_UDP)
        n = format_inet(addr, tmp, sizeof tmp);
    else
        n = -EINVAL;
    if (n < 0)
        return n;
    if ((size_t)n >= buflen)
        return -ENOSPC;
    memcpy(buf, tmp, (size_t)n + 1);
    return n;
}

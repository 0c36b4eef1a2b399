/* http_headers.c - the header lines a server adds by configuration (CORS,
 * extra headers, Cache-Control, the type of unknown files) and the answer
 * to OPTIONS when CORS is on.
 *
 * Configured lines are checked and joined once, in iop_http_new: a
 * response then copies one block, whatever the number of options. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "proto/http_srv.h"

static int is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Visible characters, obs-text, and inner spaces or tabs; not empty. */
int iop_http_header_value_check(const char *value)
{
    if (!value || !*value)
        return -EINVAL;
    for (const unsigned char *p = (const unsigned char *)value; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return -EINVAL;
    return 0;
}

int iop_http_header_check(const char *line)
{
    if (!line)
        return -EINVAL;
    size_t k = 0;
    while (is_tchar((unsigned char)line[k]))
        k++;
    if (k == 0 || line[k] != ':')
        return -EINVAL;
    const char *v = line + k + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    return iop_http_header_value_check(v);
}

struct block {
    char *p;
    size_t len, cap;
};

static int add(struct block *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static int add_s(struct block *b, const char *s)
{
    return add(b, s, strlen(s));
}

/* "Name: value" as given, trailing blanks dropped, with its CRLF. */
static int add_line(struct block *b, const char *line)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == ' ' || line[n - 1] == '\t'))
        n--;
    int rc = add(b, line, n);
    return rc < 0 ? rc : add_s(b, "\r\n");
}

int http_headers_init(iop_http *h)
{
    const struct iop_http_config *c = &h->cfg;
    struct block all = {0}, file = {0};
    int rc = 0;
    if (c->cors)
        rc = add_s(&all, "Access-Control-Allow-Origin: *\r\n"
                         "Access-Control-Expose-Headers: Content-Range, Accept-Ranges, ETag, "
                         "Content-Encoding\r\n");
    for (size_t i = 0; rc == 0 && i < c->nheaders; i++)
        rc = iop_http_header_check(c->headers[i]) < 0 ? -EINVAL : add_line(&all, c->headers[i]);
    if (rc == 0 && c->cache_control) {
        rc = iop_http_header_value_check(c->cache_control);
        if (rc == 0 && (rc = add_s(&file, "Cache-Control: ")) == 0 &&
            (rc = add_s(&file, c->cache_control)) == 0)
            rc = add_s(&file, "\r\n");
    }
    if (rc == 0 && c->default_type)
        rc = iop_http_header_value_check(c->default_type);
    if (!c->default_type)
        h->cfg.default_type = "application/octet-stream";
    h->extra = all.p;
    h->extra_len = all.len;
    h->file_extra = file.p;
    h->file_extra_len = file.len;
    return rc;
}

void http_headers_fini(iop_http *h)
{
    free(h->extra);
    free(h->file_extra);
    h->extra = h->file_extra = NULL;
    h->extra_len = h->file_extra_len = 0;
}

/* A comma-separated list of tokens (empty elements allowed, RFC 9110
 * §5.6.1), as Access-Control-Request-Headers is. */
static int token_list(struct http_str v)
{
    size_t i = 0;
    while (i < v.n) {
        while (i < v.n && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ','))
            i++;
        size_t start = i;
        while (i < v.n && is_tchar((unsigned char)v.p[i]))
            i++;
        if (i == start && i < v.n)
            return 0;
        while (i < v.n && (v.p[i] == ' ' || v.p[i] == '\t'))
            i++;
        if (i < v.n && v.p[i] != ',')
            return 0;
    }
    return 1;
}

/* OPTIONS with CORS on: 204 for a preflight (or any OPTIONS) naming the
 * methods we serve and the headers asked for; a header list that is not
 * tokens cannot be echoed safely: 400. */
void http_options(struct http_worker *w, struct http_resp *r, const struct http_req *req)
{
    struct http_str ah = req->acr_headers;
    if (ah.p && !token_list(ah)) {
        http_error_page(w, r, req, 400);
        return;
    }
    if (http_head_reserve(r, 512 + ah.n) < 0) {
        http_error_page(w, r, req, 503);
        return;
    }
    http_head_begin(w, r, 204);
    http_puts(r, "Allow: GET, HEAD, OPTIONS\r\n"
                 "Access-Control-Allow-Methods: GET, HEAD\r\n"
                 "Access-Control-Max-Age: 600\r\n");
    if (ah.n) {
        http_puts(r, "Access-Control-Allow-Headers: ");
        http_put(r, ah.p, ah.n);
        http_puts(r, "\r\n");
    }
    http_head_end(r, req);
}

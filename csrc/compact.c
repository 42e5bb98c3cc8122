/* The JSON compactor: validate and strip insignificant whitespace, keeping
   every token's bytes as they are (what msgspec.json.format(data, indent=-1)
   does). It returns -1 when it cannot vouch for the input (not JSON, or
   unusual enough to leave to msgspec, e.g. nested very deeply); the caller
   then leaves the data to the Python rule.

   tests/unit/test_hotpath.py checks it against msgspec on generated, random
   and mutated inputs. */

#include "hotpath.h"

#define COMPACT_MAX_DEPTH 64

typedef struct {
    const unsigned char *p, *end;
    unsigned char *out;
} Compactor;

static inline void skip_ws(Compactor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t')) c->p++;
}

static inline int is_hex(unsigned char ch) {
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/* 1 for the bytes a string scan must stop at: '"', '\\', control characters
   (invalid raw) and non-ASCII (left to msgspec). */
static unsigned char STRING_STOP[256];

void compact_init(void) {
    for (int ch = 0; ch < 256; ch++) STRING_STOP[ch] = JSON_NEEDS_ESCAPE(ch) || ch >= 0x80;
}

static int compact_string(Compactor *c) {
    const unsigned char *start = c->p++; /* the opening quote */
    while (c->p < c->end) {
        while (c->p < c->end && !STRING_STOP[*c->p]) c->p++;
        if (c->p >= c->end) break;
        unsigned char ch = *c->p;
        if (ch == '"') {
            c->p++;
            size_t n = (size_t)(c->p - start);
            memcpy(c->out, start, n);
            c->out += n;
            return 0;
        }
        if (ch == '\\') {
            if (c->end - c->p < 2) return -1;
            unsigned char e = c->p[1];
            if (e == 'u') {
                if (c->end - c->p < 6 || !is_hex(c->p[2]) || !is_hex(c->p[3]) || !is_hex(c->p[4]) ||
                    !is_hex(c->p[5]))
                    return -1;
                if ((c->p[2] | 0x20) == 'd' && !(c->p[3] >= '0' && c->p[3] <= '7'))
                    return -1; /* a surrogate escape (D800-DFFF): paired or not, msgspec decides */
                c->p += 6;
            } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' ||
                       e == 't') {
                c->p += 2;
            } else {
                return -1;
            }
            continue;
        }
        if (ch < 0x20 || ch >= 0x80) return -1; /* control characters are invalid; non-ASCII: msgspec decides */
        c->p++;
    }
    return -1;
}

static int compact_number(Compactor *c) {
    const unsigned char *start = c->p, *p = c->p, *end = c->end;
    if (p < end && *p == '-') p++;
    if (p >= end) return -1;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') p++;
    } else {
        return -1;
    }
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9') return -1;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return -1;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    size_t n = (size_t)(p - start);
    if (n > 32) return -1; /* long numbers: msgspec decides */
    memcpy(c->out, start, n);
    c->out += n;
    c->p = p;
    return 0;
}

static int compact_literal(Compactor *c, const char *word, size_t n) {
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return -1;
    memcpy(c->out, word, n);
    c->out += n;
    c->p += n;
    return 0;
}

static int compact_value(Compactor *c, int depth);

/* An array or an object, from its opening bracket: its members (an object's
   as "key":value), separated by commas, up to its closing bracket. */
static int compact_container(Compactor *c, int depth) {
    const unsigned char close = *c->p == '[' ? ']' : '}';
    if (depth >= COMPACT_MAX_DEPTH) return -1;
    *c->out++ = *c->p++;
    skip_ws(c);
    if (c->p < c->end && *c->p == close) {
        *c->out++ = close;
        c->p++;
        return 0;
    }
    for (;;) {
        if (close == '}') { /* an object's member starts with its key */
            skip_ws(c);
            if (c->p >= c->end || *c->p != '"' || compact_string(c) < 0) return -1;
            skip_ws(c);
            if (c->p >= c->end || *c->p != ':') return -1;
            *c->out++ = ':';
            c->p++;
        }
        if (compact_value(c, depth + 1) < 0) return -1;
        skip_ws(c);
        if (c->p >= c->end) return -1;
        if (*c->p == close) {
            *c->out++ = close;
            c->p++;
            return 0;
        }
        if (*c->p != ',') return -1;
        *c->out++ = ',';
        c->p++;
    }
}

static int compact_value(Compactor *c, int depth) {
    skip_ws(c);
    if (c->p >= c->end) return -1;
    switch (*c->p) {
    case '"':
        return compact_string(c);
    case 't':
        return compact_literal(c, "true", 4);
    case 'f':
        return compact_literal(c, "false", 5);
    case 'n':
        return compact_literal(c, "null", 4);
    case '[':
    case '{':
        return compact_container(c, depth);
    default:
        return compact_number(c);
    }
}

Py_ssize_t compact_json(const unsigned char *data, Py_ssize_t n, unsigned char *out) {
    Compactor c = {data, data + n, out};
    if (compact_value(&c, 0) < 0) return -1;
    skip_ws(&c);
    if (c.p != c.end) return -1;
    return (Py_ssize_t)(c.out - out);
}

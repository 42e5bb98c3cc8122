/* The envelope encoder: an Envelope as msgspec.json.Encoder(order="deterministic")
   writes shmring's, byte for byte: compact, fields in declaration order,
   omit-defaults. It encodes only what fields.c loaded and the writer
   vouched for; tests/unit/test_hotpath.py compares its records with the
   Python path's. */

#include "hotpath.h"

/* 1 for the bytes the encoder must escape. */
static unsigned char NEEDS_ESCAPE[256];

void encode_init(void) {
    for (int ch = 0; ch < 256; ch++) NEEDS_ESCAPE[ch] = JSON_NEEDS_ESCAPE(ch);
}

static char *put_bytes(char *w, const char *s, Py_ssize_t n) {
    memcpy(w, s, (size_t)n);
    return w + n;
}

#define PUT_LITERAL(w, s) put_bytes((w), (s), (Py_ssize_t)(sizeof(s) - 1))

static const char HEX[] = "0123456789abcdef";

/* Quoted and escaped like msgspec: '"', '\\' and control characters; the
   rest (DEL and non-ASCII UTF-8 included) as is. Needs 2 + 6*n bytes. */
static char *put_string(char *w, const char *s, Py_ssize_t n) {
    *w++ = '"';
    Py_ssize_t i = 0;
    for (;;) {
        Py_ssize_t run = i;
        while (run < n && !NEEDS_ESCAPE[(unsigned char)s[run]]) run++;
        memcpy(w, s + i, (size_t)(run - i));
        w += run - i;
        if (run >= n) break;
        i = run + 1;
        unsigned char ch = (unsigned char)s[run];
        *w++ = '\\';
        switch (ch) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '\b': *w++ = 'b'; break;
        case '\f': *w++ = 'f'; break;
        case '\n': *w++ = 'n'; break;
        case '\r': *w++ = 'r'; break;
        case '\t': *w++ = 't'; break;
        default:
            *w++ = 'u';
            *w++ = '0';
            *w++ = '0';
            *w++ = HEX[ch >> 4];
            *w++ = HEX[ch & 15];
        }
    }
    *w++ = '"';
    return w;
}

/* A literal (a key with what precedes it: `,"url":`) and a string after it. */
#define PUT_MEMBER(w, key, s, n) put_string(PUT_LITERAL((w), (key)), (s), (n))

/* noinline: inlined into its caller, GCC 12 turned the divisions by 10 into div instructions */
__attribute__((noinline)) static char *put_u64(char *w, uint64_t v) {
    char tmp[24];
    int i = 0;
    do {
        tmp[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i) *w++ = tmp[--i];
    return w;
}

int ensure_room(void **buf, Py_ssize_t *size, Py_ssize_t need) {
    if (need <= *size) return 0;
    Py_ssize_t grown = *size ? *size : 4096;
    while (grown < need) grown *= 2;
    void *p = PyMem_Realloc(*buf, (size_t)grown);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *buf = p;
    *size = grown;
    return 0;
}

Py_ssize_t encode_envelope(char **scratch, Py_ssize_t *scratch_size, Py_ssize_t max_record_bytes, PyObject *csid,
                           uint64_t seq, const EventFields *f, long long ts, PyObject *detail, const char *data,
                           Py_ssize_t data_len) {
    Py_ssize_t n_csid, n_type, n_cat, n_kind, n_sevent, n_detail, n_url;
    const char *u_csid = utf8_of(csid, &n_csid), *u_type = utf8_of(f->type, &n_type),
               *u_cat = utf8_of(f->category, &n_cat), *u_kind = utf8_of(f->kind, &n_kind),
               *u_sevent = utf8_of(f->source_event, &n_sevent), *u_detail = utf8_of(detail, &n_detail),
               *u_url = utf8_of(f->url, &n_url);
    if (!u_csid || !u_type || !u_cat || !u_kind || !u_sevent || !u_detail || !u_url) return -1;
    Py_ssize_t bound = 256 + data_len + 6 * (n_csid + n_type + n_cat + n_kind + n_sevent + n_detail + n_url);
    /* Metadata: str to str, keys strictly ascending (the order the encoder
       sorts them in). Checked here, in the phase that runs no Python code. */
    Py_ssize_t i = 0;
    PyObject *key, *value, *previous = NULL;
    while (PyDict_Next(f->metadata, &i, &key, &value)) {
        Py_ssize_t nk, nv;
        if (!PyUnicode_CheckExact(key) || !PyUnicode_CheckExact(value)) return -1;
        if (previous != NULL && PyUnicode_Compare(previous, key) >= 0) return -1;
        previous = key;
        if (!utf8_of(key, &nk) || !utf8_of(value, &nv)) return -1;
        bound += 8 + 6 * (nk + nv);
    }
    if (bound > max_record_bytes + 4096 + 6 * max_record_bytes) return -1;
    if (ensure_room((void **)scratch, scratch_size, bound) < 0) {
        PyErr_Clear();
        return -1;
    }
    char *w = *scratch;
    w = PUT_MEMBER(w, "{\"capture_session_id\":", u_csid, n_csid);
    w = PUT_LITERAL(w, ",\"seq\":");
    w = put_u64(w, seq);
    w = PUT_LITERAL(w, ",\"event\":{\"ts\":");
    w = put_u64(w, (uint64_t)ts);
    w = PUT_MEMBER(w, ",\"type\":", u_type, n_type);
    w = PUT_MEMBER(w, ",\"category\":", u_cat, n_cat);
    w = PUT_MEMBER(w, ",\"source\":{\"kind\":", u_kind, n_kind);
    if (n_sevent) w = PUT_MEMBER(w, ",\"event\":", u_sevent, n_sevent);
    if (PyDict_GET_SIZE(f->metadata)) {
        w = PUT_LITERAL(w, ",\"metadata\":{");
        i = 0;
        int first = 1;
        while (PyDict_Next(f->metadata, &i, &key, &value)) {
            Py_ssize_t nk, nv;
            const char *uk = PyUnicode_AsUTF8AndSize(key, &nk), *uv = PyUnicode_AsUTF8AndSize(value, &nv);
            if (!first) *w++ = ',';
            first = 0;
            w = put_string(w, uk, nk);
            *w++ = ':';
            w = put_string(w, uv, nv);
        }
        *w++ = '}';
    }
    w = PUT_MEMBER(w, "},\"detail_level\":", u_detail, n_detail);
    if (n_url) w = PUT_MEMBER(w, ",\"url\":", u_url, n_url);
    if (data != NULL) {
        w = PUT_LITERAL(w, ",\"data\":");
        w = put_bytes(w, data, data_len);
    }
    w = PUT_LITERAL(w, "}}");
    return (Py_ssize_t)(w - *scratch);
}


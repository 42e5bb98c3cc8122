/* shmring._hotpath: the writer's publish fast path and the reader's take-and-decode, compiled.

Rules:
- This is an accelerator, never the reference. ring.py, schema.py and
  session.py hold the reference behaviour in Python; without a C compiler
  shmring runs on them alone.
- The fast path only vouches for the common case: an exact Event whose fields
  are already valid, a category seen before, data that is absent or already
  compact JSON, no gating wait, nothing over the size limit. For anything
  else it calls the Python slow path (``slow(event)``) before writing a byte,
  so every error and every rare rule has one implementation.
- Whatever it accepts it must encode byte for byte as msgspec does
  (tests/unit/test_hotpath.py checks this against msgspec, differentially).
- It runs entirely under the GIL and never releases it, so it is atomic with
  respect to the writer's other threads. While the slow path runs
  (``slow_depth`` > 0, possibly asleep waiting for a flusher) it defers.

Memory ordering: the same seqlock protocol as ring.py (read its docstring),
with real fences: an mfence (``__atomic_thread_fence(__ATOMIC_SEQ_CST)``)
where ring.py uses ``full_fence``, and an 8-byte atomic store for each stamp.
*/

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if !defined(__x86_64__)
#error "shmring._hotpath is built for x86-64 only (see ring.py's memory-ordering assumption)"
#endif

#define SLOT_FORMAT "<QQIBBBBQ32s"
#define SLOT_STAMP 0
#define SLOT_POS 8
#define SLOT_LEN 16
#define SLOT_KIND 20
#define SLOT_DETAIL 21
#define SLOT_FLAGS 22
#define SLOT_PAD 23
#define SLOT_TS 24
#define SLOT_CATEGORY 32
#define CATEGORY_BYTES 32

static inline void full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline void store_u64(char *p, uint64_t v) { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELAXED); }

/* ------------------------------------------------------------------------
   JSON compaction: validate and strip insignificant whitespace, keeping every
   token's bytes as they are (what msgspec.json.format(data, indent=-1) does).
   Returns the output length, or -1 when it cannot vouch for the input (not
   JSON, or unusual enough to leave to msgspec, e.g. nested very deeply).
   `out` must have room for `n` bytes; compaction never grows the input. */

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
/* 1 for the bytes the encoder must escape: '"', '\\' and control characters. */
static unsigned char NEEDS_ESCAPE[256];

static void init_tables(void) {
    for (int ch = 0; ch < 256; ch++) {
        NEEDS_ESCAPE[ch] = ch < 0x20 || ch == '"' || ch == '\\';
        STRING_STOP[ch] = NEEDS_ESCAPE[ch] || ch >= 0x80;
    }
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
        if (depth >= COMPACT_MAX_DEPTH) return -1;
        *c->out++ = '[';
        c->p++;
        skip_ws(c);
        if (c->p < c->end && *c->p == ']') {
            *c->out++ = ']';
            c->p++;
            return 0;
        }
        for (;;) {
            if (compact_value(c, depth + 1) < 0) return -1;
            skip_ws(c);
            if (c->p >= c->end) return -1;
            if (*c->p == ']') {
                *c->out++ = ']';
                c->p++;
                return 0;
            }
            if (*c->p != ',') return -1;
            *c->out++ = ',';
            c->p++;
        }
    case '{':
        if (depth >= COMPACT_MAX_DEPTH) return -1;
        *c->out++ = '{';
        c->p++;
        skip_ws(c);
        if (c->p < c->end && *c->p == '}') {
            *c->out++ = '}';
            c->p++;
            return 0;
        }
        for (;;) {
            skip_ws(c);
            if (c->p >= c->end || *c->p != '"' || compact_string(c) < 0) return -1;
            skip_ws(c);
            if (c->p >= c->end || *c->p != ':') return -1;
            *c->out++ = ':';
            c->p++;
            if (compact_value(c, depth + 1) < 0) return -1;
            skip_ws(c);
            if (c->p >= c->end) return -1;
            if (*c->p == '}') {
                *c->out++ = '}';
                c->p++;
                return 0;
            }
            if (*c->p != ',') return -1;
            *c->out++ = ',';
            c->p++;
        }
    default:
        return compact_number(c);
    }
}

static Py_ssize_t compact_json(const unsigned char *data, Py_ssize_t n, unsigned char *out) {
    Compactor c = {data, data + n, out};
    if (compact_value(&c, 0) < 0) return -1;
    skip_ws(&c);
    if (c.p != c.end) return -1;
    return (Py_ssize_t)(c.out - out);
}

/* ------------------------------------------------------------------------
   Envelope encoding, as msgspec.json.Encoder(order="deterministic") writes
   shmring's Envelope: compact, fields in declaration order, omit-defaults. */

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

/* noinline: inlined into fast_publish, GCC 12 turned the divisions by 10 into div instructions */
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

/* The UTF-8 of an exact str, or NULL (error cleared) when it has none (lone surrogates). */
static inline const char *utf8_of(PyObject *s, Py_ssize_t *n) {
    const char *u = PyUnicode_AsUTF8AndSize(s, n);
    if (u == NULL) PyErr_Clear();
    return u;
}

/* One Event's fields, borrowed from it while the fast path runs. */
typedef struct {
    PyObject *type, *category, *source, *kind, *source_event, *metadata, *detail, *url, *data, *truncated, *ts;
    long long ts_value;
} EventFields;

static PyObject *s_copy;        /* "__copy__", interned */
static PyObject *s_copy_method; /* "copy", interned */

static void fields_clear(EventFields *f) {
    Py_CLEAR(f->type);
    Py_CLEAR(f->category);
    Py_CLEAR(f->source);
    Py_CLEAR(f->kind);
    Py_CLEAR(f->source_event);
    Py_CLEAR(f->metadata);
    Py_CLEAR(f->detail);
    Py_CLEAR(f->url);
    Py_CLEAR(f->data);
    Py_CLEAR(f->truncated);
    Py_CLEAR(f->ts);
}

/* Where msgspec keeps each field: the offset of its member descriptor's slot,
   found once (configure_publish) for the exact Event and Source types. */
enum { F_TS, F_TYPE, F_CATEGORY, F_SOURCE, F_DETAIL, F_URL, F_DATA, F_TRUNCATED, EVENT_FIELDS };
enum { F_KIND, F_SOURCE_EVENT, F_METADATA, SOURCE_FIELDS };
static const char *const EVENT_FIELD_NAMES[EVENT_FIELDS] = {"ts", "type", "category", "source", "detail_level",
                                                            "url", "data", "truncated"};
static const char *const SOURCE_FIELD_NAMES[SOURCE_FIELDS] = {"kind", "event", "metadata"};
static const char *const ENVELOPE_SEQ_NAME[1] = {"seq"};

static int member_offsets(PyTypeObject *type, const char *const *names, int n, Py_ssize_t *offsets) {
    for (int i = 0; i < n; i++) {
        PyObject *descr = PyDict_GetItemString(type->tp_dict, names[i]); /* borrowed */
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a plain struct field", type->tp_name, names[i]);
            return -1;
        }
        offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    return 0;
}

/* A field of an object of the exact type the offsets were found for: a new
   reference, or NULL when unset (the slow path reports that). */
static inline PyObject *field_at(PyObject *obj, Py_ssize_t offset) {
    PyObject *v = *(PyObject **)((char *)obj + offset);
    Py_XINCREF(v);
    return v;
}

/* Load the fields; 0 if each has the exact type the fast path handles, -1 if not
   (the slow path will judge). */
static int fields_load(EventFields *f, PyObject *event, PyTypeObject *source_type, const Py_ssize_t *ev_off,
                       const Py_ssize_t *src_off) {
    memset(f, 0, sizeof(*f));
#define LOAD(dst, obj, offset)                              \
    do {                                                    \
        if (((dst) = field_at((obj), (offset))) == NULL) return -1; \
    } while (0)
    LOAD(f->type, event, ev_off[F_TYPE]);
    LOAD(f->category, event, ev_off[F_CATEGORY]);
    LOAD(f->source, event, ev_off[F_SOURCE]);
    if (Py_TYPE(f->source) != source_type) return -1;
    LOAD(f->kind, f->source, src_off[F_KIND]);
    LOAD(f->source_event, f->source, src_off[F_SOURCE_EVENT]);
    LOAD(f->metadata, f->source, src_off[F_METADATA]);
    LOAD(f->detail, event, ev_off[F_DETAIL]);
    LOAD(f->url, event, ev_off[F_URL]);
    LOAD(f->data, event, ev_off[F_DATA]);
    LOAD(f->truncated, event, ev_off[F_TRUNCATED]);
    LOAD(f->ts, event, ev_off[F_TS]);
#undef LOAD
    if (!PyUnicode_CheckExact(f->type) || PyUnicode_GET_LENGTH(f->type) == 0) return -1;
    if (!PyUnicode_CheckExact(f->category) || !PyUnicode_CheckExact(f->kind) ||
        !PyUnicode_CheckExact(f->source_event) || !PyUnicode_CheckExact(f->detail) ||
        !PyUnicode_CheckExact(f->url) || !PyDict_CheckExact(f->metadata))
        return -1;
    if (f->truncated != Py_False || !PyLong_CheckExact(f->ts)) return -1;
    int overflow = 0;
    f->ts_value = PyLong_AsLongLongAndOverflow(f->ts, &overflow);
    if (overflow || f->ts_value < 0) {
        PyErr_Clear();
        return -1;
    }
    /* Each string's UTF-8 now (CPython caches it in the str), so that phase 2
       only reads it; metadata must map str to str (order is checked in phase 2). */
    Py_ssize_t n;
    if (!utf8_of(f->type, &n) || !utf8_of(f->category, &n) || !utf8_of(f->kind, &n) ||
        !utf8_of(f->source_event, &n) || !utf8_of(f->detail, &n) || !utf8_of(f->url, &n))
        return -1;
    Py_ssize_t i = 0;
    PyObject *key, *value;
    while (PyDict_Next(f->metadata, &i, &key, &value)) {
        if (!PyUnicode_CheckExact(key) || !PyUnicode_CheckExact(value) || !utf8_of(key, &n) || !utf8_of(value, &n))
            return -1;
    }
    return 0;
}

/* 1 if `event` (and its source) still hold the field values `f` was loaded
   from: Python code in phase 1 may have changed them. Reads pointers only. */
static int fields_unchanged(const EventFields *f, PyObject *event, const Py_ssize_t *ev_off,
                            const Py_ssize_t *src_off, int stamped) {
#define AT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))
    if (AT(event, ev_off[F_TYPE]) != f->type || AT(event, ev_off[F_CATEGORY]) != f->category ||
        AT(event, ev_off[F_SOURCE]) != f->source || AT(event, ev_off[F_URL]) != f->url ||
        AT(event, ev_off[F_TRUNCATED]) != f->truncated)
        return 0;
    if (!stamped && (AT(event, ev_off[F_TS]) != f->ts || AT(event, ev_off[F_DETAIL]) != f->detail ||
                     AT(event, ev_off[F_DATA]) != f->data))
        return 0;
    return AT(f->source, src_off[F_KIND]) == f->kind && AT(f->source, src_off[F_SOURCE_EVENT]) == f->source_event &&
           AT(f->source, src_off[F_METADATA]) == f->metadata;
#undef AT
}

/* ------------------------------------------------------------------------
   The writer. ring.py's RingWriterCore subclasses it; its members are the
   writer's state, shared by the fast path here and the slow path in Python. */

typedef struct {
    PyObject_HEAD
    /* state, also used by ring.py's write() */
    PyObject *buf;
    PyObject *gate;
    long long mask, head_mask, data_base, data_bytes, data_head, data_low, gate_seq, gate_low, last_seq;
    int closed, slow_depth;
    /* the fast path's configuration (configure_publish) */
    Py_buffer ring_view, registry_view;
    int have_views;
    long long header_bytes, slot_bytes, hdr_head, hdr_data_low, reg_wait_flags, reg_scan_end, reg_gates_changed,
        chunk_bytes, max_record_bytes;
    PyObject *capture_session_id, *category_fields, *kind_codes, *detail_codes, *standard;
    PyObject *event_type, *source_type, *envelope_type, *raw_type, *no_data;
    PyObject *slow, *on_flags, *normalise_data, *encode_data;
    Py_ssize_t event_offsets[EVENT_FIELDS], source_offsets[SOURCE_FIELDS], envelope_seq_offset;
    char *scratch;
    Py_ssize_t scratch_size;
    unsigned char *compact_buf;
    Py_ssize_t compact_size;
} Writer;

static int Writer_traverse(Writer *self, visitproc visit, void *arg) {
    Py_VISIT(self->buf);
    Py_VISIT(self->gate);
    Py_VISIT(self->capture_session_id);
    Py_VISIT(self->category_fields);
    Py_VISIT(self->kind_codes);
    Py_VISIT(self->detail_codes);
    Py_VISIT(self->standard);
    Py_VISIT(self->event_type);
    Py_VISIT(self->source_type);
    Py_VISIT(self->envelope_type);
    Py_VISIT(self->raw_type);
    Py_VISIT(self->no_data);
    Py_VISIT(self->slow);
    Py_VISIT(self->on_flags);
    Py_VISIT(self->normalise_data);
    Py_VISIT(self->encode_data);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static void release_views(Writer *self) {
    if (self->have_views) {
        self->have_views = 0;
        PyBuffer_Release(&self->ring_view);
        PyBuffer_Release(&self->registry_view);
    }
}

static int Writer_clear(Writer *self) {
    release_views(self);
    Py_CLEAR(self->buf);
    Py_CLEAR(self->gate);
    Py_CLEAR(self->capture_session_id);
    Py_CLEAR(self->category_fields);
    Py_CLEAR(self->kind_codes);
    Py_CLEAR(self->detail_codes);
    Py_CLEAR(self->standard);
    Py_CLEAR(self->event_type);
    Py_CLEAR(self->source_type);
    Py_CLEAR(self->envelope_type);
    Py_CLEAR(self->raw_type);
    Py_CLEAR(self->no_data);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->on_flags);
    Py_CLEAR(self->normalise_data);
    Py_CLEAR(self->encode_data);
    return 0;
}

static void Writer_dealloc(Writer *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Writer_clear(self);
    PyMem_Free(self->scratch);
    PyMem_Free(self->compact_buf);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* Grow *buf (of *size bytes) to hold at least `need`, doubling from 4 KiB. 0, or -1 with MemoryError. */
static int ensure_room(void **buf, Py_ssize_t *size, Py_ssize_t need) {
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

typedef struct {
    const char *key;
    long long *dst;
} LayoutField;

/* Check the layout's slot format against the one compiled in, and read
   `fields` from layout.ACCELERATOR_LAYOUT. 0, or -1 with an exception. */
static int read_layout(PyObject *layout, const LayoutField *fields, size_t n) {
    PyObject *fmt = PyDict_GetItemString(layout, "slot_format");
    if (fmt == NULL || !PyUnicode_Check(fmt) || PyUnicode_CompareWithASCIIString(fmt, SLOT_FORMAT) != 0) {
        PyErr_SetString(PyExc_ValueError, "shmring._hotpath was built for slot format " SLOT_FORMAT
                                          "; rebuild it (pip install -e .) after changing layout.py");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *v = PyDict_GetItemString(layout, fields[i].key);
        if (v == NULL) {
            PyErr_Format(PyExc_KeyError, "layout is missing %s", fields[i].key);
            return -1;
        }
        if ((*fields[i].dst = PyLong_AsLongLong(v)) == -1 && PyErr_Occurred()) return -1;
    }
    return 0;
}

static PyObject *Writer_configure_publish(Writer *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"ring", "registry", "layout", "capture_session_id", "category_fields", "kind_codes",
                             "detail_codes", "standard", "event_type", "source_type", "envelope_type", "raw_type",
                             "no_data", "slow", "on_flags", "normalise_data", "encode_data", NULL};
    PyObject *ring, *registry, *layout, *csid, *category_fields, *kind_codes, *detail_codes, *standard;
    PyObject *event_type, *source_type, *envelope_type, *raw_type, *no_data, *slow, *on_flags, *normalise_data,
        *encode_data;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OOO!UO!O!O!UO!O!O!O!OOOOO", kwlist, &ring, &registry,
                                     &PyDict_Type, &layout, &csid, &PyDict_Type, &category_fields, &PyDict_Type,
                                     &kind_codes, &PyDict_Type, &detail_codes, &standard, &PyType_Type, &event_type,
                                     &PyType_Type, &source_type, &PyType_Type, &envelope_type, &PyType_Type,
                                     &raw_type, &no_data, &slow, &on_flags, &normalise_data, &encode_data))
        return NULL;
    const LayoutField fields[] = {
        {"header_bytes", &self->header_bytes}, {"slot_bytes", &self->slot_bytes},
        {"hdr_head", &self->hdr_head}, {"hdr_data_low", &self->hdr_data_low},
        {"reg_wait_flags", &self->reg_wait_flags}, {"reg_scan_end", &self->reg_scan_end},
        {"reg_gates_changed", &self->reg_gates_changed}, {"chunk_bytes", &self->chunk_bytes},
        {"max_record_bytes", &self->max_record_bytes}};
    if (read_layout(layout, fields, sizeof(fields) / sizeof(fields[0])) < 0) return NULL;
    if (PyDict_GetItemWithError(detail_codes, standard) == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "standard must be a key of detail_codes");
        return NULL;
    }
    if (member_offsets((PyTypeObject *)event_type, EVENT_FIELD_NAMES, EVENT_FIELDS, self->event_offsets) < 0 ||
        member_offsets((PyTypeObject *)source_type, SOURCE_FIELD_NAMES, SOURCE_FIELDS, self->source_offsets) < 0 ||
        member_offsets((PyTypeObject *)envelope_type, ENVELOPE_SEQ_NAME, 1, &self->envelope_seq_offset) < 0)
        return NULL;
    release_views(self);
    if (PyObject_GetBuffer(ring, &self->ring_view, PyBUF_WRITABLE) < 0) return NULL;
    if (PyObject_GetBuffer(registry, &self->registry_view, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&self->ring_view);
        return NULL;
    }
    self->have_views = 1;
    if (self->data_bytes < self->max_record_bytes || self->mask < 0 || self->slot_bytes != 64 ||
        self->data_base != self->header_bytes + (self->mask + 1) * self->slot_bytes ||
        self->ring_view.len < self->data_base + self->data_bytes || self->registry_view.len < self->reg_scan_end) {
        release_views(self);
        PyErr_SetString(PyExc_ValueError, "the writer's sizes do not match the ring, the registry or the layout");
        return NULL;
    }
#define SET(field, value) Py_XSETREF(self->field, Py_NewRef(value))
    SET(capture_session_id, csid);
    SET(category_fields, category_fields);
    SET(kind_codes, kind_codes);
    SET(detail_codes, detail_codes);
    SET(standard, standard);
    SET(event_type, event_type);
    SET(source_type, source_type);
    SET(envelope_type, envelope_type);
    SET(raw_type, raw_type);
    SET(no_data, no_data);
    SET(slow, slow);
    SET(on_flags, on_flags);
    SET(normalise_data, normalise_data);
    SET(encode_data, encode_data);
#undef SET
    Py_RETURN_NONE;
}

static PyObject *Writer_release(Writer *self, PyObject *unused) {
    self->closed = 1;
    release_views(self);
    Py_RETURN_NONE;
}

static long long code_of(PyObject *codes, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(codes, key);
    if (v == NULL) {
        PyErr_Clear();
        return -1;
    }
    long long code = PyLong_AsLongLong(v);
    if (code < 0 || code > 255) {
        PyErr_Clear();
        return -1;
    }
    return code;
}

static inline long long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (long long)t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

/* Encode the envelope into self->scratch; its length, or -1 (not vouched, error cleared). */
static Py_ssize_t encode_envelope(Writer *self, PyObject *csid, uint64_t seq, EventFields *f, long long ts,
                                  PyObject *detail, const char *data, Py_ssize_t data_len) {
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
    if (bound > self->max_record_bytes + 4096 + 6 * (Py_ssize_t)self->max_record_bytes) return -1;
    if (ensure_room((void **)&self->scratch, &self->scratch_size, bound) < 0) {
        PyErr_Clear();
        return -1;
    }
    char *w = self->scratch;
    w = PUT_LITERAL(w, "{\"capture_session_id\":");
    w = put_string(w, u_csid, n_csid);
    w = PUT_LITERAL(w, ",\"seq\":");
    w = put_u64(w, seq);
    w = PUT_LITERAL(w, ",\"event\":{\"ts\":");
    w = put_u64(w, (uint64_t)ts);
    w = PUT_LITERAL(w, ",\"type\":");
    w = put_string(w, u_type, n_type);
    w = PUT_LITERAL(w, ",\"category\":");
    w = put_string(w, u_cat, n_cat);
    w = PUT_LITERAL(w, ",\"source\":{\"kind\":");
    w = put_string(w, u_kind, n_kind);
    if (n_sevent) {
        w = PUT_LITERAL(w, ",\"event\":");
        w = put_string(w, u_sevent, n_sevent);
    }
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
    w = PUT_LITERAL(w, "},\"detail_level\":");
    w = put_string(w, u_detail, n_detail);
    if (n_url) {
        w = PUT_LITERAL(w, ",\"url\":");
        w = put_string(w, u_url, n_url);
    }
    if (data != NULL) {
        w = PUT_LITERAL(w, ",\"data\":");
        w = put_bytes(w, data, data_len);
    }
    w = PUT_LITERAL(w, "}}");
    return (Py_ssize_t)(w - self->scratch);
}

/* The event's data as compact JSON: 1 with *data set (a new reference, the
   input itself when it was already compact; or no_data), 0 when not vouched,
   -1 on error (raised by the Python normaliser: the event is invalid). */
static int normalised_data(Writer *self, PyObject *data, PyObject **result) {
    PyObject *const original = data;
    if (data == self->no_data) {
        *result = Py_NewRef(data);
        return 1;
    }
    int is_raw = Py_TYPE(data) == (PyTypeObject *)self->raw_type, is_bytes = PyBytes_CheckExact(data),
        is_str = PyUnicode_CheckExact(data);
    PyObject *own = NULL; /* a Raw over a bytearray or memoryview is a live view: copy it before validating */
    if (is_raw) {
        own = PyObject_CallMethodNoArgs(data, s_copy_method);
        if (own == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1;
            PyErr_Clear(); /* a msgspec without Raw.copy: the Python rule copies it */
            is_raw = 0;
        } else {
            data = own;
        }
    }
    if (is_raw || is_bytes || is_str) {
        Py_buffer view = {0};
        if (is_str) {
            view.buf = (void *)utf8_of(data, &view.len);
            if (view.buf == NULL) return 0;
        } else if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            return 0;
        }
        Py_ssize_t n = -1;
        if (view.len > 0 && view.len <= self->max_record_bytes) { /* longer: the Python rule truncates it */
            if (ensure_room((void **)&self->compact_buf, &self->compact_size, view.len) == 0)
                n = compact_json((const unsigned char *)view.buf, view.len, self->compact_buf);
            else
                PyErr_Clear();
        }
        Py_ssize_t len = view.len;
        if (!is_str) PyBuffer_Release(&view);
        if (n == len && is_raw) { /* valid and already compact */
            *result = data; /* own's reference */
            return 1;
        }
        if (n >= 0) { /* valid: a Raw of the compact text, as the Python rule makes (str stays str) */
            PyObject *compact = n == len ? Py_NewRef(data)
                                : is_str ? PyUnicode_FromStringAndSize((const char *)self->compact_buf, n)
                                         : PyBytes_FromStringAndSize((const char *)self->compact_buf, n);
            if (compact == NULL) return -1;
            PyObject *raw = PyObject_CallOneArg(self->raw_type, compact);
            Py_DECREF(compact);
            Py_XDECREF(own);
            if (raw == NULL) return -1;
            *result = raw;
            return 1;
        }
    }
    Py_XDECREF(own);
    data = original;
    if (PyDict_CheckExact(data) || PyList_CheckExact(data)) {
        /* A container: the encoder the Python rule uses; any failure, the Python rule reports it. */
        PyObject *encoded = PyObject_CallOneArg(self->encode_data, data);
        if (encoded != NULL) {
            PyObject *raw = PyObject_CallOneArg(self->raw_type, encoded);
            Py_DECREF(encoded);
            if (raw == NULL) return -1;
            *result = raw;
            return 1;
        }
        if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;
        PyErr_Clear();
    }
    /* Anything else (not compact, not a Raw, not vouched for): the Python
       rule validates and compacts it, or raises InvalidEvent. */
    PyObject *normal = PyObject_CallOneArg(self->normalise_data, data);
    if (normal == NULL) return -1;
    if (normal != self->no_data && Py_TYPE(normal) != (PyTypeObject *)self->raw_type) {
        Py_DECREF(normal);
        return 0;
    }
    *result = normal;
    return 1;
}

/* Steals `value`. */
static inline void set_field(PyObject *obj, Py_ssize_t offset, PyObject *value) {
    PyObject **slot = (PyObject **)((char *)obj + offset);
    PyObject *old = *slot;
    *slot = value;
    Py_XDECREF(old);
}

/* 1: published, *envelope set; 2: the same, and a wait flag is set (call on_flags).
   0: not vouched for, nothing written. -1: error, nothing written.

   Two phases. The first may run Python code (the data normaliser, or a
   garbage collection triggered by an allocation, which runs finalizers):
   another thread can publish or close meanwhile, or change the event. So it
   takes no seq and touches no writer state. The second runs no Python code
   and allocates no GC-tracked object before it writes: it re-checks the
   state and the event's fields, takes the seq, encodes and writes,
   atomically with respect to every other thread. */
static int fast_publish(Writer *self, PyObject *event, PyObject **envelope_out) {
    if (Py_TYPE(event) != (PyTypeObject *)self->event_type || !self->have_views || self->closed || self->slow_depth)
        return 0;

    /* -- phase 1: validate, normalise, build the envelope (seq still unset) */
    EventFields f;
    PyObject *category_field = NULL, *data = NULL, *stamped = NULL, *envelope = NULL;
    Py_buffer data_view;
    int have_data_view = 0, result = 0;
    if (fields_load(&f, event, (PyTypeObject *)self->source_type, self->event_offsets, self->source_offsets) < 0)
        goto done;
    category_field = PyDict_GetItemWithError(self->category_fields, f.category);
    if (category_field == NULL || !PyBytes_CheckExact(category_field) ||
        PyBytes_GET_SIZE(category_field) != CATEGORY_BYTES) {
        PyErr_Clear(); /* a category not seen yet: the slow path validates it */
        category_field = NULL;
        goto done;
    }
    Py_INCREF(category_field);
    long long kind = code_of(self->kind_codes, f.kind);
    if (kind < 0) goto done;
    PyObject *detail = f.detail;
    long long detail_code;
    if (PyUnicode_GET_LENGTH(detail) == 0) {
        detail = self->standard;
        detail_code = code_of(self->detail_codes, detail);
    } else {
        detail_code = code_of(self->detail_codes, detail);
    }
    if (detail_code < 0) goto done;
    long long ts = f.ts_value ? f.ts_value : now_us();
    int r = normalised_data(self, f.data, &data);
    if (r <= 0) {
        result = r;
        goto done;
    }
    /* As the Python path: the caller's Event is copied when anything is
       filled in or when it has data (normalised into a Raw of our own). */
    if (f.ts_value == 0 || detail != f.detail || f.data != self->no_data) {
        stamped = PyObject_CallMethodNoArgs(event, s_copy);
        if (stamped == NULL) {
            result = -1;
            goto done;
        }
        PyObject *ts_obj = f.ts_value ? Py_NewRef(f.ts) : PyLong_FromLongLong(ts);
        if (ts_obj == NULL) {
            result = -1;
            goto done;
        }
        /* Our own fresh copy: set its slots as the member descriptors would.
           None of these values is a GC container, so msgspec's GC tracking
           of the copy stays right. */
        set_field(stamped, self->event_offsets[F_TS], ts_obj);
        set_field(stamped, self->event_offsets[F_DETAIL], Py_NewRef(detail));
        set_field(stamped, self->event_offsets[F_DATA], Py_NewRef(data));
    } else {
        stamped = Py_NewRef(event);
    }
    PyObject *zero = PyLong_FromLong(0); /* a placeholder seq; phase 2 sets the real one */
    if (zero == NULL) {
        result = -1;
        goto done;
    }
    PyObject *envelope_args[] = {self->capture_session_id, zero, stamped};
    envelope = PyObject_Vectorcall(self->envelope_type, envelope_args, 3, NULL);
    Py_DECREF(zero);
    if (envelope == NULL || Py_TYPE(envelope) != (PyTypeObject *)self->envelope_type) {
        result = envelope == NULL ? -1 : 0;
        goto done;
    }
    const char *data_bytes = NULL;
    Py_ssize_t data_len = 0;
    if (data != self->no_data) {
        if (PyObject_GetBuffer(data, &data_view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            goto done;
        }
        have_data_view = 1;
        data_bytes = (const char *)data_view.buf;
        data_len = data_view.len;
    }

    /* -- phase 2: no Python code from here on ----------------------------- */
    if (!self->have_views || self->closed || self->slow_depth) goto done;
    if (!fields_unchanged(&f, stamped, self->event_offsets, self->source_offsets, stamped != event)) goto done;
    char *ring = (char *)self->ring_view.buf;
    const char *registry = (const char *)self->registry_view.buf;
    if (registry[self->reg_gates_changed]) goto done; /* a flusher came or went: the slow path re-evaluates gating */
    uint64_t seq = (uint64_t)self->last_seq + 1;
    Py_ssize_t length = encode_envelope(self, self->capture_session_id, seq, &f, ts, detail, data_bytes, data_len);
    if (length < 0 || length > self->max_record_bytes) goto done; /* the size rule lives in Python */
    /* Where the record goes; a gating wait is the slow path's. */
    long long area = self->data_bytes, pos = self->data_head, off = pos % area;
    if (off + length > area) {
        pos += area - off;
        off = 0;
    }
    long long end = pos + length;
    if ((long long)seq > self->gate_seq || end - area > self->gate_low) goto done;
    PyObject *seq_obj = PyLong_FromUnsignedLongLong(seq); /* not GC-tracked: no collection */
    if (seq_obj == NULL) {
        result = -1;
        goto done;
    }
    set_field(envelope, self->envelope_seq_offset, seq_obj);

    /* The seqlock write: ring.py's RingWriterCore.write, step for step. */
    if (end - area > self->data_low) {
        long long low = end - area + self->chunk_bytes;
        if (pos < low) low = pos;
        if (self->gate_low < low) low = self->gate_low;
        self->data_low = low;
        store_u64(ring + self->hdr_data_low, (uint64_t)low);
        full_fence(); /* data_low is raised before any old byte is overwritten */
    }
    char *slot = ring + self->header_bytes + (long long)(seq & (uint64_t)self->mask) * self->slot_bytes;
    store_u64(slot + SLOT_STAMP, 2 * seq + 1);
    __atomic_signal_fence(__ATOMIC_SEQ_CST); /* the compiler keeps the odd stamp first (the CPU does: TSO) */
    store_u64(slot + SLOT_POS, (uint64_t)pos);
    uint32_t len32 = (uint32_t)length;
    memcpy(slot + SLOT_LEN, &len32, 4);
    slot[SLOT_KIND] = (char)kind;
    slot[SLOT_DETAIL] = (char)detail_code;
    slot[SLOT_FLAGS] = 0;
    slot[SLOT_PAD] = 0;
    store_u64(slot + SLOT_TS, (uint64_t)ts);
    memcpy(slot + SLOT_CATEGORY, PyBytes_AS_STRING(category_field), CATEGORY_BYTES);
    memcpy(ring + self->data_base + off, self->scratch, (size_t)length);
    full_fence(); /* the copy (rep movsb, not ordered by TSO) is visible before the even stamp */
    __atomic_store_n((uint64_t *)(slot + SLOT_STAMP), 2 * seq, __ATOMIC_RELEASE);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    self->data_head = end;
    self->last_seq = (long long)seq;
    if (!(seq & (uint64_t)self->head_mask)) {
        store_u64(ring + self->hdr_head, seq);
        store_u64(ring + self->hdr_head + 8, (uint64_t)end);
    }
    /* The slot stores are globally visible before the flag loads (no lost
       wake-up: a reader sets its flag, fences, then re-checks the slot).
       Scanned here, while the registry is surely still mapped. */
    full_fence();
    result = memchr(registry + self->reg_wait_flags, 1, (size_t)(self->reg_scan_end - self->reg_wait_flags)) ? 2 : 1;
    *envelope_out = envelope;
    envelope = NULL;
done:
    if (have_data_view) PyBuffer_Release(&data_view);
    fields_clear(&f);
    Py_XDECREF(category_field);
    Py_XDECREF(data);
    Py_XDECREF(stamped);
    Py_XDECREF(envelope);
    return result;
}

static PyObject *Writer_publish(Writer *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    /* publish(event), publish(event=event): as CaptureSession.publish takes it. */
    PyObject *event = NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs == 1 && nkw == 0) {
        event = args[0];
    } else if (nargs == 0 && nkw == 1 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "event") == 0) {
        event = args[0];
    } else {
        PyErr_SetString(PyExc_TypeError, "publish() takes exactly one argument, the event");
        return NULL;
    }
    if (self->slow == NULL || self->on_flags == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this writer's publish path is not configured");
        return NULL;
    }
    PyObject *envelope = NULL;
    int r = fast_publish(self, event, &envelope);
    if (r < 0) return NULL;
    if (r == 0) return PyObject_CallOneArg(self->slow, event);
    if (r == 2) { /* a reader sleeps, or a flusher came or went */
        PyObject *r2 = PyObject_CallNoArgs(self->on_flags);
        if (r2 == NULL) {
            Py_DECREF(envelope);
            return NULL;
        }
        Py_DECREF(r2);
    }
    return envelope;
}

static PyMethodDef Writer_methods[] = {
    {"configure_publish", (PyCFunction)(void (*)(void))Writer_configure_publish, METH_VARARGS | METH_KEYWORDS,
     "Set up the compiled publish fast path over the ring and registry buffers."},
    {"publish", (PyCFunction)(void (*)(void))Writer_publish, METH_FASTCALL | METH_KEYWORDS,
     "publish(event) -> Envelope: the fast path; defers to the slow path for anything it does not vouch for."},
    {"release", (PyCFunction)Writer_release, METH_NOARGS,
     "Stop the fast path and release its buffer views (before the ring is unmapped)."},
    {NULL}};

static PyMemberDef Writer_members[] = {
    {"buf", T_OBJECT, offsetof(Writer, buf), 0, NULL},
    {"gate", T_OBJECT, offsetof(Writer, gate), 0, NULL},
    {"mask", T_LONGLONG, offsetof(Writer, mask), 0, NULL},
    {"head_mask", T_LONGLONG, offsetof(Writer, head_mask), 0, NULL},
    {"data_base", T_LONGLONG, offsetof(Writer, data_base), 0, NULL},
    {"data_bytes", T_LONGLONG, offsetof(Writer, data_bytes), 0, NULL},
    {"data_head", T_LONGLONG, offsetof(Writer, data_head), 0, NULL},
    {"data_low", T_LONGLONG, offsetof(Writer, data_low), 0, NULL},
    {"gate_seq", T_LONGLONG, offsetof(Writer, gate_seq), 0, NULL},
    {"gate_low", T_LONGLONG, offsetof(Writer, gate_low), 0, NULL},
    {"last_seq", T_LONGLONG, offsetof(Writer, last_seq), 0, NULL},
    {"closed", T_INT, offsetof(Writer, closed), 0, NULL},
    {"slow_depth", T_INT, offsetof(Writer, slow_depth), 0, NULL},
    {NULL}};

static PyType_Slot Writer_slots[] = {
    {Py_tp_doc, "The writer's state and its compiled publish fast path (subclassed by ring.RingWriterCore)."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, Writer_dealloc},
    {Py_tp_traverse, Writer_traverse},
    {Py_tp_clear, Writer_clear},
    {Py_tp_methods, Writer_methods},
    {Py_tp_members, Writer_members},
    {0, NULL}};

static PyType_Spec Writer_spec = {
    "shmring._hotpath.Writer", sizeof(Writer), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    Writer_slots};

/* ------------------------------------------------------------------------
   The reader's fast path: take one whole record and decode it. ring.py's
   RingReaderCore.take_ready plus reader.py's _decode_checked, step for step. */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int have_view;
    uint64_t mask;
    long long data_base, data_bytes, header_bytes, slot_bytes, hdr_data_low;
    PyObject *decode, *decode_error, *envelope_type;
    Py_ssize_t seq_offset;
} Taker;

static int Taker_traverse(Taker *self, visitproc visit, void *arg) {
    Py_VISIT(self->decode);
    Py_VISIT(self->decode_error);
    Py_VISIT(self->envelope_type);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int Taker_clear(Taker *self) {
    if (self->have_view) {
        self->have_view = 0;
        PyBuffer_Release(&self->view);
    }
    Py_CLEAR(self->decode);
    Py_CLEAR(self->decode_error);
    Py_CLEAR(self->envelope_type);
    return 0;
}

static void Taker_dealloc(Taker *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Taker_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static int Taker_init(Taker *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"ring", "capacity", "data_bytes", "layout", "decode", "decode_error", "envelope_type",
                             NULL};
    PyObject *ring, *layout, *decode, *decode_error, *envelope_type;
    long long capacity, data_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OLLO!OOO!", kwlist, &ring, &capacity, &data_bytes, &PyDict_Type,
                                     &layout, &decode, &decode_error, &PyType_Type, &envelope_type))
        return -1;
    const LayoutField fields[] = {
        {"header_bytes", &self->header_bytes}, {"slot_bytes", &self->slot_bytes},
        {"hdr_data_low", &self->hdr_data_low}};
    if (read_layout(layout, fields, sizeof(fields) / sizeof(fields[0])) < 0) return -1;
    if (member_offsets((PyTypeObject *)envelope_type, ENVELOPE_SEQ_NAME, 1, &self->seq_offset) < 0) return -1;
    if (capacity < 1 || (capacity & (capacity - 1)) || data_bytes < 1 || self->slot_bytes != 64) {
        PyErr_SetString(PyExc_ValueError, "capacity must be a power of two and data_bytes positive");
        return -1;
    }
    Taker_clear(self);
    if (PyObject_GetBuffer(ring, &self->view, PyBUF_SIMPLE) < 0) return -1;
    self->have_view = 1;
    self->mask = (uint64_t)capacity - 1;
    self->data_bytes = data_bytes;
    self->data_base = self->header_bytes + capacity * self->slot_bytes;
    if (self->view.len < self->data_base + data_bytes) {
        Taker_clear(self);
        PyErr_SetString(PyExc_ValueError, "ring smaller than its capacity and data_bytes say");
        return -1;
    }
    self->decode = Py_NewRef(decode);
    self->decode_error = Py_NewRef(decode_error);
    self->envelope_type = Py_NewRef(envelope_type);
    return 0;
}

static inline uint64_t load_u64(const char *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED); }

static PyObject *Taker_take_decoded(Taker *self, PyObject *arg) {
    unsigned long long seq = PyLong_AsUnsignedLongLong(arg);
    if (seq == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (!self->have_view) Py_RETURN_NONE;
    const char *ring = (const char *)self->view.buf;
    const char *slot = ring + self->header_bytes + (long long)(seq & self->mask) * self->slot_bytes;
    uint64_t stamp = __atomic_load_n((const uint64_t *)(slot + SLOT_STAMP), __ATOMIC_ACQUIRE);
    if (stamp != 2 * (uint64_t)seq) Py_RETURN_NONE;
    uint64_t pos = load_u64(slot + SLOT_POS);
    uint32_t length;
    memcpy(&length, slot + SLOT_LEN, 4);
    uint64_t off = pos % (uint64_t)self->data_bytes;
    if (off + length > (uint64_t)self->data_bytes) Py_RETURN_NONE; /* not a whole record: the slow path judges */
    PyObject *payload = PyBytes_FromStringAndSize(ring + self->data_base + off, (Py_ssize_t)length);
    if (payload == NULL) return NULL;
    full_fence(); /* the copy is done before the re-check */
    if (load_u64(ring + self->hdr_data_low) > pos || load_u64(slot + SLOT_STAMP) != stamp) {
        Py_DECREF(payload);
        Py_RETURN_NONE;
    }
    PyObject *envelope = PyObject_CallOneArg(self->decode, payload);
    Py_DECREF(payload);
    if (envelope == NULL) {
        if (!PyErr_ExceptionMatches(self->decode_error)) return NULL;
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    if (Py_TYPE(envelope) != (PyTypeObject *)self->envelope_type) {
        Py_DECREF(envelope);
        Py_RETURN_FALSE;
    }
    PyObject *got = *(PyObject **)((char *)envelope + self->seq_offset);
    int same = got != NULL && PyLong_CheckExact(got) && PyLong_AsUnsignedLongLong(got) == seq;
    if (PyErr_Occurred()) PyErr_Clear();
    if (!same) {
        Py_DECREF(envelope);
        Py_RETURN_FALSE;
    }
    return envelope;
}

static PyObject *Taker_release(Taker *self, PyObject *unused) {
    if (self->have_view) {
        self->have_view = 0;
        PyBuffer_Release(&self->view);
    }
    Py_RETURN_NONE;
}

static PyMethodDef Taker_methods[] = {
    {"take_decoded", (PyCFunction)Taker_take_decoded, METH_O,
     "take_decoded(seq) -> Envelope | None | False: the envelope if seq is whole now; None if it is not (or "
     "was overwritten while copied); False if its bytes are not seq's envelope."},
    {"release", (PyCFunction)Taker_release, METH_NOARGS, "Release the view of the ring (before it is unmapped)."},
    {NULL}};

static PyType_Slot Taker_slots[] = {
    {Py_tp_doc, "RecordTaker(*, ring, capacity, data_bytes, layout, decode, decode_error, envelope_type): "
                "an unfiltered reader's fast path."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, Taker_init},
    {Py_tp_dealloc, Taker_dealloc},
    {Py_tp_traverse, Taker_traverse},
    {Py_tp_clear, Taker_clear},
    {Py_tp_methods, Taker_methods},
    {0, NULL}};

static PyType_Spec Taker_spec = {"shmring._hotpath.RecordTaker", sizeof(Taker), 0,
                                 Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, Taker_slots};

/* ------------------------------------------------------------------------
   Module functions. */

static PyObject *py_fence(PyObject *module, PyObject *unused) {
    full_fence();
    Py_RETURN_NONE;
}

static PyObject *py_compact_json(PyObject *module, PyObject *obj) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, view.len);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Py_ssize_t n = compact_json((const unsigned char *)view.buf, view.len, (unsigned char *)PyBytes_AS_STRING(out));
    PyBuffer_Release(&view);
    if (n < 0) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    _PyBytes_Resize(&out, n);
    return out;
}

static PyMethodDef module_methods[] = {
    {"fence", py_fence, METH_NOARGS, "A full memory barrier (mfence)."},
    {"compact_json", py_compact_json, METH_O,
     "compact_json(data) -> bytes | None: data validated and compacted, or None when not vouched for."},
    {NULL}};

static int module_exec(PyObject *module) {
init_tables();
    if ((s_copy = PyUnicode_InternFromString("__copy__")) == NULL) return -1;
    if ((s_copy_method = PyUnicode_InternFromString("copy")) == NULL) return -1;
    PyObject *writer_type = PyType_FromModuleAndSpec(module, &Writer_spec, NULL);
    if (writer_type == NULL) return -1;
    if (PyModule_AddObject(module, "Writer", writer_type) < 0) {
        Py_DECREF(writer_type);
        return -1;
    }
    PyObject *taker_type = PyType_FromModuleAndSpec(module, &Taker_spec, NULL);
    if (taker_type == NULL) return -1;
    if (PyModule_AddObject(module, "RecordTaker", taker_type) < 0) {
        Py_DECREF(taker_type);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot module_slots[] = {{Py_mod_exec, module_exec}, {0, NULL}};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT, "shmring._hotpath",
    "The writer's publish fast path, compiled; the reference behaviour is the Python in ring.py and session.py.",
    0, module_methods, module_slots};

PyMODINIT_FUNC PyInit__hotpath(void) { return PyModuleDef_Init(&hotpath_module); }

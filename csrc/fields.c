/* One Event's fields, read by the offsets config.c found (and checked) for
   the exact Event and Source types: loaded and type-checked before the
   fast path vouches for an event, and compared by pointer afterwards, in case
   Python code in between changed the event. */

#include "hotpath.h"

const char *const EVENT_FIELD_NAMES[EVENT_FIELDS] = {"ts", "type", "category", "source", "detail_level",
                                                     "url", "data", "truncated"};
const char *const SOURCE_FIELD_NAMES[SOURCE_FIELDS] = {"kind", "event", "metadata"};
const char *const ENVELOPE_FIELD_NAMES[ENVELOPE_FIELDS] = {"capture_session_id", "seq", "event"};

void fields_clear(EventFields *f) {
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

/* A field of an object of the exact type the offsets were found for: a new
   reference, or NULL when unset (the slow path reports that). */
static inline PyObject *field_at(PyObject *obj, Py_ssize_t offset) {
    PyObject *v = *(PyObject **)((char *)obj + offset);
    Py_XINCREF(v);
    return v;
}

/* Load the fields; 0 if each has the exact type the fast path handles, -1 if not
   (the slow path will judge). */
int fields_load(EventFields *f, PyObject *event, PyTypeObject *source_type, const Py_ssize_t *ev_off,
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
int fields_unchanged(const EventFields *f, PyObject *event, const Py_ssize_t *ev_off, const Py_ssize_t *src_off,
                     int stamped) {
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

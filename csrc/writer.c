/* The writer. ring.py's RingWriterCore subclasses it; its members are the
   writer's state, shared by the fast path here and the slow path in Python
   (ring.py's _WriterState names the same members for the pure-Python path;
   a unit test checks that the two agree). */

#include "hotpath.h"

#include <time.h>

static PyObject *s_copy;        /* "__copy__", interned */
static PyObject *s_copy_method; /* "copy", interned */

int writer_init(void) {
    if ((s_copy = PyUnicode_InternFromString("__copy__")) == NULL) return -1;
    if ((s_copy_method = PyUnicode_InternFromString("copy")) == NULL) return -1;
    return 0;
}

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
        reg_wake_word, chunk_bytes, max_record_bytes;
    PyObject *capture_session_id, *category_fields, *kind_codes, *detail_codes, *standard;
    PyObject *event_type, *source_type, *envelope_type, *raw_type, *no_data;
    PyObject *slow, *on_flags, *normalise_data, *encode_data;
    Py_ssize_t event_offsets[EVENT_FIELDS], source_offsets[SOURCE_FIELDS], envelope_seq_offset;
    char *scratch;
    Py_ssize_t scratch_size;
    unsigned char *compact_buf;
    Py_ssize_t compact_size;
} Writer;

/* The objects a Writer holds: traverse visits and clear clears each of them. */
#define WRITER_OBJECTS(X)                                                                                             \
    X(buf) X(gate) X(capture_session_id) X(category_fields) X(kind_codes) X(detail_codes) X(standard) X(event_type) \
    X(source_type) X(envelope_type) X(raw_type) X(no_data) X(slow) X(on_flags) X(normalise_data) X(encode_data)

static int Writer_traverse(Writer *self, visitproc visit, void *arg) {
    WRITER_OBJECTS(VISIT_FIELD)
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
    WRITER_OBJECTS(CLEAR_FIELD)
    return 0;
}

static void Writer_dealloc(Writer *self) {
    PyMem_Free(self->scratch);
    PyMem_Free(self->compact_buf);
    dealloc_cleared((PyObject *)self, (inquiry)Writer_clear);
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
        {"reg_gates_changed", &self->reg_gates_changed}, {"reg_wake_word", &self->reg_wake_word},
        {"chunk_bytes", &self->chunk_bytes},
        {"max_record_bytes", &self->max_record_bytes}};
    if (read_layout(layout, fields, sizeof(fields) / sizeof(fields[0])) < 0) return NULL;
    if (PyDict_GetItemWithError(detail_codes, standard) == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "standard must be a key of detail_codes");
        return NULL;
    }
    Py_ssize_t event_offsets[EVENT_FIELDS], source_offsets[SOURCE_FIELDS], envelope_offsets[ENVELOPE_FIELDS];
    if (struct_offsets((PyTypeObject *)event_type, EVENT_FIELD_NAMES, EVENT_FIELDS, event_offsets) < 0 ||
        struct_offsets((PyTypeObject *)source_type, SOURCE_FIELD_NAMES, SOURCE_FIELDS, source_offsets) < 0 ||
        struct_offsets((PyTypeObject *)envelope_type, ENVELOPE_FIELD_NAMES, ENVELOPE_FIELDS, envelope_offsets) < 0)
        return NULL;
    memcpy(self->event_offsets, event_offsets, sizeof(event_offsets));
    memcpy(self->source_offsets, source_offsets, sizeof(source_offsets));
    self->envelope_seq_offset = envelope_offsets[F_SEQ];
    release_views(self);
    if (PyObject_GetBuffer(ring, &self->ring_view, PyBUF_WRITABLE) < 0) return NULL;
    if (PyObject_GetBuffer(registry, &self->registry_view, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&self->ring_view);
        return NULL;
    }
    self->have_views = 1;
    if (self->data_bytes < self->max_record_bytes || self->mask < 0 || self->slot_bytes != 64 ||
        self->data_base != self->header_bytes + (self->mask + 1) * self->slot_bytes ||
        self->ring_view.len < self->data_base + self->data_bytes || self->registry_view.len < self->reg_scan_end ||
        self->reg_wake_word % 4 || self->registry_view.len < self->reg_wake_word + 4) {
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

static PyObject *Writer_release(Writer *self, PyObject *Py_UNUSED(unused)) {
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

/* 1: published, *envelope set (and the wake word's sleepers woken); 2: the same, and a semaphore's wait
   flag or the gates-changed flag is set (call on_flags).
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
    Py_ssize_t length = encode_envelope(&self->scratch, &self->scratch_size, self->max_record_bytes,
                                        self->capture_session_id, seq, &f, ts, detail, data_bytes, data_len);
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
    unsigned char flags = 0;
    for (long long i = self->reg_wait_flags; i < self->reg_scan_end; i++) flags |= (unsigned char)registry[i];
    if (flags & WAIT_FUTEX) eventcount_wake((char *)registry + self->reg_wake_word); /* every compiled sleeper */
    result = flags & WAIT_SEMAPHORE ? 2 : 1; /* semaphore sleepers, or gates changed: on_flags */
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

PyType_Spec Writer_spec = {
    "shmring._hotpath.Writer", sizeof(Writer), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    Writer_slots};

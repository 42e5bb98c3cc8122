/* The reader's fast paths: take one whole record and decode it (ring.py's
   RingReaderCore.take_ready plus results.py's decode_checked, step for step),
   and take a run of whole records undecoded (RingReaderCore.take_ready_run,
   building the RawRecords reader.py's read_raw_many would build).

   A RecordTaker also holds its reader's cursor and accounting (the fields of
   accounting.py's ReaderState, which reader.py reads and writes as
   attributes), so that the per-event read and iteration run here whole, with
   no Python frame: ReadMethod is Reader.read (a method descriptor: it finds
   the reader's RecordTaker in its `_state`), and `iterate` gives the iterator
   of `for result in reader`. Each takes the next event when the taker is
   `fast` (a reader in the ring) and the event is whole now, skipping as
   filtered what the reader's filter (set_filter) does not accept; for
   anything else (a wait, a drop, the end, a replay) it calls the reader's
   Python methods, which hold every rule. */

#include "hotpath.h"

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int have_view;
    uint64_t mask;
    long long data_base, data_bytes, header_bytes, slot_bytes, hdr_data_low;
    PyObject *decode, *decode_error, *envelope_type;
    Py_ssize_t seq_offset;
    /* The reader's accounting: delivered + dropped + filtered == cursor - start, always. */
    long long cursor, delivered, dropped, filtered, unpublished, progress_every;
    char fast;
    /* set_filter(): the reader's Filter as slot fields. Bit c of kinds (details) set: kind (detail) code c is
       accepted; categories: n_categories accepted 32-byte fields, or any when n_categories is -1. */
    int filtering;
    uint64_t kinds, details;
    Py_ssize_t n_categories;
    char *categories;
    /* connect(): the result type and the reader's Python methods, unbound (called as f(reader, ...)). */
    PyObject *result_type, *on_progress, *read_slow, *next_slow;
} Taker;

/* The objects a Taker holds: traverse visits and clear clears each of them. */
#define TAKER_OBJECTS(X) X(decode) X(decode_error) X(envelope_type) X(result_type) X(on_progress) X(read_slow) \
    X(next_slow)

static PyTypeObject *TakerType; /* set by taker_init: ReadMethod and iterate recognise a reader's taker by it */

static int Taker_traverse(Taker *self, visitproc visit, void *arg) {
    TAKER_OBJECTS(VISIT_FIELD)
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static void clear_filter(Taker *self) {
    self->filtering = 0;
    PyMem_Free(self->categories);
    self->categories = NULL;
}

static void release_view(Taker *self) {
    if (self->have_view) {
        self->have_view = 0;
        PyBuffer_Release(&self->view);
    }
}

static int Taker_clear(Taker *self) {
    release_view(self);
    clear_filter(self);
    TAKER_OBJECTS(CLEAR_FIELD)
    return 0;
}

static void Taker_dealloc(Taker *self) { dealloc_cleared((PyObject *)self, (inquiry)Taker_clear); }

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
    Py_ssize_t envelope_offsets[ENVELOPE_FIELDS];
    if (struct_offsets((PyTypeObject *)envelope_type, ENVELOPE_FIELD_NAMES, ENVELOPE_FIELDS, envelope_offsets) < 0)
        return -1;
    if (capacity < 1 || (capacity & (capacity - 1)) || data_bytes < 1 || self->slot_bytes != 64) {
        PyErr_SetString(PyExc_ValueError, "capacity must be a power of two and data_bytes positive");
        return -1;
    }
    Taker_clear(self);
    self->seq_offset = envelope_offsets[F_SEQ];
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

#define PREFETCH_BYTES 1024
/* Ask for the next event's slot fields and (up to PREFETCH_BYTES of) its bytes while this one is decoded: the
   writer wrote them on another core, and fetching them there stalls the next copy otherwise (a tenth of a
   decoding reader's CPU per event, flat out, two readers on two cores). Only once the next event is whole: lines
   the writer has yet to write are left alone, or each of its stores would first take them back from every reader
   that asked (at 10k events/s with 4 readers that cost the writer 3 µs a publish). A hint only: it reads no
   record and judges nothing; the next take checks its slot as always. */
static inline void prefetch_next(const Taker *self, unsigned long long seq) {
    const char *ring = (const char *)self->view.buf;
    const char *slot = ring + self->header_bytes + (long long)((seq + 1) & self->mask) * self->slot_bytes;
    if (load_u64(slot + SLOT_STAMP) != 2 * (uint64_t)(seq + 1)) return;
    uint64_t off = load_u64(slot + SLOT_POS) % (uint64_t)self->data_bytes;
    uint32_t length;
    memcpy(&length, slot + SLOT_LEN, 4);
    if (length > PREFETCH_BYTES) length = PREFETCH_BYTES;
    if (off + length > (uint64_t)self->data_bytes) return;
    const char *next = ring + self->data_base + off;
    for (uint32_t i = 0; i < length; i += 64) __builtin_prefetch(next + i, 0, 3);
}

/* A copy of seq's record, if its slot is stamped for seq and the record lies whole in the data area: a new
   bytes object, with the slot and the record's position for the caller's re-check after its fence. NULL
   without an exception when it is not (the slow path judges), NULL with one on failure. */
static PyObject *copy_record(Taker *self, unsigned long long seq, const char **slot_out, uint64_t *pos_out) {
    const char *ring = (const char *)self->view.buf;
    const char *slot = ring + self->header_bytes + (long long)(seq & self->mask) * self->slot_bytes;
    if (__atomic_load_n((const uint64_t *)(slot + SLOT_STAMP), __ATOMIC_ACQUIRE) != 2 * (uint64_t)seq) return NULL;
    uint64_t pos = load_u64(slot + SLOT_POS);
    uint32_t length;
    memcpy(&length, slot + SLOT_LEN, 4);
    uint64_t off = pos % (uint64_t)self->data_bytes;
    if (off + length > (uint64_t)self->data_bytes) return NULL;
    *slot_out = slot;
    *pos_out = pos;
    return PyBytes_FromStringAndSize(ring + self->data_base + off, (Py_ssize_t)length);
}

enum { TAKE_ERROR = -1, TAKE_NOT_WHOLE = 0, TAKE_ENVELOPE = 1, TAKE_NOT_ITS_ENVELOPE = 2 };

/* Take seq's record and decode it: TAKE_ENVELOPE with *out set, TAKE_NOT_WHOLE if it is not whole now (or was
   overwritten while copied), TAKE_NOT_ITS_ENVELOPE if its bytes are not seq's envelope, TAKE_ERROR with an
   exception. */
static int take_envelope(Taker *self, unsigned long long seq, PyObject **out) {
    if (!self->have_view) return TAKE_NOT_WHOLE;
    const char *slot;
    uint64_t pos;
    PyObject *payload = copy_record(self, seq, &slot, &pos);
    if (payload == NULL) return PyErr_Occurred() ? TAKE_ERROR : TAKE_NOT_WHOLE;
    full_fence(); /* the copy is done before the re-check */
    if (load_u64((const char *)self->view.buf + self->hdr_data_low) > pos ||
        load_u64(slot + SLOT_STAMP) != 2 * (uint64_t)seq) {
        Py_DECREF(payload);
        return TAKE_NOT_WHOLE;
    }
    prefetch_next(self, seq);
    PyObject *envelope = PyObject_CallOneArg(self->decode, payload);
    Py_DECREF(payload);
    if (envelope == NULL) {
        if (!PyErr_ExceptionMatches(self->decode_error)) return TAKE_ERROR;
        PyErr_Clear();
        return TAKE_NOT_ITS_ENVELOPE;
    }
    if (Py_TYPE(envelope) != (PyTypeObject *)self->envelope_type) {
        Py_DECREF(envelope);
        return TAKE_NOT_ITS_ENVELOPE;
    }
    PyObject *got = *(PyObject **)((char *)envelope + self->seq_offset);
    int same = got != NULL && PyLong_CheckExact(got) && PyLong_AsUnsignedLongLong(got) == seq;
    if (PyErr_Occurred()) PyErr_Clear();
    if (!same) {
        Py_DECREF(envelope);
        return TAKE_NOT_ITS_ENVELOPE;
    }
    *out = envelope;
    return TAKE_ENVELOPE;
}

static PyObject *Taker_take_decoded(Taker *self, PyObject *arg) {
    unsigned long long seq = PyLong_AsUnsignedLongLong(arg);
    if (seq == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    PyObject *envelope = NULL;
    switch (take_envelope(self, seq, &envelope)) {
        case TAKE_ENVELOPE: return envelope;
        case TAKE_NOT_WHOLE: Py_RETURN_NONE;
        case TAKE_NOT_ITS_ENVELOPE: Py_RETURN_FALSE;
        default: return NULL;
    }
}

/* 1 if the reader's filter accepts the event of `slot` (reader.py's Filter.accepts_slot, on its fields). */
static int accepted(const Taker *self, const char *slot) {
    unsigned char kind = (unsigned char)slot[SLOT_KIND], detail = (unsigned char)slot[SLOT_DETAIL];
    if (kind >= 64 || !(self->kinds >> kind & 1) || detail >= 64 || !(self->details >> detail & 1)) return 0;
    if (self->n_categories < 0) return 1;
    for (Py_ssize_t i = 0; i < self->n_categories; i++)
        if (memcmp(slot + SLOT_CATEGORY, self->categories + (size_t)CATEGORY_BYTES * i, CATEGORY_BYTES) == 0) return 1;
    return 0;
}

/* reader.py's fast path of Reader.read (and of its _take for a filter), step for step: when `fast`, skip the
   events the filter does not accept (counted as filtered: ring.py's poll judges each from its slot, then checks
   the stamp again), then the next event if it is whole now, counted as delivered, as a new
   result_type(envelope) in *out (1); 0 if not taken (the reader's Python read decides); -1 with an exception.
   Every progress_every steps the reader publishes its progress (on_progress). */
static int fast_step(Taker *self, PyObject *reader, PyObject **out) {
    if (!self->fast || self->result_type == NULL || !self->have_view) return 0;
    unsigned long long seq = (unsigned long long)self->cursor + 1;
    while (self->filtering) {
        const char *slot = (const char *)self->view.buf + self->header_bytes + (long long)(seq & self->mask) *
                           self->slot_bytes;
        if (__atomic_load_n((const uint64_t *)(slot + SLOT_STAMP), __ATOMIC_ACQUIRE) != 2 * (uint64_t)seq) return 0;
        if (accepted(self, slot)) break;
        full_fence(); /* the fields are read before the re-check */
        if (load_u64(slot + SLOT_STAMP) != 2 * (uint64_t)seq) return 0; /* rewritten meanwhile: lapped */
        self->cursor = (long long)seq++;
        self->filtered++;
        self->unpublished++;
    }
    PyObject *envelope = NULL;
    int taken = take_envelope(self, seq, &envelope);
    if (taken != TAKE_ENVELOPE) return taken == TAKE_ERROR ? -1 : 0; /* a record not its seq's: Python drops it */
    self->cursor = (long long)seq;
    self->delivered++;
    PyObject *result = PyObject_Vectorcall(self->result_type, &envelope, 1, NULL);
    Py_DECREF(envelope);
    if (result == NULL) return -1;
    if (++self->unpublished >= self->progress_every) {
        PyObject *done = PyObject_CallOneArg(self->on_progress, reader);
        if (done == NULL) {
            Py_DECREF(result);
            return -1;
        }
        Py_DECREF(done);
    }
    *out = result;
    return 1;
}

/* A set of small codes (None: any) as a bitmask; -1 with an exception. */
static int code_mask(PyObject *codes, uint64_t *mask) {
    if (codes == Py_None) {
        *mask = ~(uint64_t)0;
        return 0;
    }
    *mask = 0;
    PyObject *it = PyObject_GetIter(codes), *code;
    if (it == NULL) return -1;
    while ((code = PyIter_Next(it)) != NULL) {
        long c = PyLong_AsLong(code);
        Py_DECREF(code);
        if (c == -1 && PyErr_Occurred()) break;
        if (c < 0 || c >= 64) {
            PyErr_Format(PyExc_ValueError, "a filter code must be from 0 to 63, not %ld", c);
            break;
        }
        *mask |= (uint64_t)1 << c;
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

static PyObject *Taker_took(Taker *self, PyObject *arg) {
    long long seq = PyLong_AsLongLong(arg);
    if (seq == -1 && PyErr_Occurred()) return NULL;
    self->cursor = seq;
    self->delivered++;
    return PyBool_FromLong(++self->unpublished >= self->progress_every);
}

static PyObject *Taker_passed(Taker *self, PyObject *arg) {
    long long seq = PyLong_AsLongLong(arg);
    if (seq == -1 && PyErr_Occurred()) return NULL;
    self->cursor = seq;
    self->filtered++;
    self->unpublished++;
    Py_RETURN_NONE;
}

static PyObject *Taker_set_filter(Taker *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"kind_codes", "detail_codes", "category_fields", NULL};
    PyObject *kinds, *details, *categories;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OOO", kwlist, &kinds, &details, &categories)) return NULL;
    uint64_t kind_mask, detail_mask;
    if (code_mask(kinds, &kind_mask) < 0 || code_mask(details, &detail_mask) < 0) return NULL;
    char *fields = NULL;
    Py_ssize_t n = -1;
    if (categories != Py_None) {
        PyObject *seq = PySequence_Fast(categories, "category_fields must be a collection of 32-byte fields");
        if (seq == NULL) return NULL;
        n = PySequence_Fast_GET_SIZE(seq);
        fields = PyMem_Malloc((size_t)CATEGORY_BYTES * (n ? n : 1));
        if (fields == NULL) {
            Py_DECREF(seq);
            return PyErr_NoMemory();
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *field = PySequence_Fast_GET_ITEM(seq, i);
            if (!PyBytes_Check(field) || PyBytes_GET_SIZE(field) != CATEGORY_BYTES) {
                PyErr_SetString(PyExc_ValueError, "a category field must be 32 bytes");
                PyMem_Free(fields);
                Py_DECREF(seq);
                return NULL;
            }
            memcpy(fields + (size_t)CATEGORY_BYTES * i, PyBytes_AS_STRING(field), CATEGORY_BYTES);
        }
        Py_DECREF(seq);
    }
    clear_filter(self);
    self->kinds = kind_mask;
    self->details = detail_mask;
    self->n_categories = n;
    self->categories = fields;
    self->filtering = 1;
    Py_RETURN_NONE;
}

static PyObject *Taker_connect(Taker *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"result_type", "on_progress", "read_slow", "next_slow", NULL};
    PyObject *result_type, *on_progress, *read_slow, *next_slow;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$O!OOO", kwlist, &PyType_Type, &result_type, &on_progress,
                                     &read_slow, &next_slow))
        return NULL;
    Py_XSETREF(self->result_type, Py_NewRef(result_type));
    Py_XSETREF(self->on_progress, Py_NewRef(on_progress));
    Py_XSETREF(self->read_slow, Py_NewRef(read_slow));
    Py_XSETREF(self->next_slow, Py_NewRef(next_slow));
    Py_RETURN_NONE;
}

/* The category name of a slot's 32-byte field: names[field] (reader.py's cache), filled on a miss with
   field.rstrip(b"\0").decode("ascii", "replace"). Returns a new reference. */
static PyObject *category_name(PyObject *names, const char *field) {
    PyObject *key = PyBytes_FromStringAndSize(field, CATEGORY_BYTES);
    if (key == NULL) return NULL;
    PyObject *name = PyDict_GetItemWithError(names, key);
    if (name != NULL) {
        Py_DECREF(key);
        return Py_NewRef(name);
    }
    if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    Py_ssize_t n = CATEGORY_BYTES;
    while (n > 0 && field[n - 1] == '\0') n--;
    name = PyUnicode_DecodeASCII(field, n, "replace");
    if (name == NULL || PyDict_SetItem(names, key, name) < 0) Py_CLEAR(name);
    Py_DECREF(key);
    return name;
}

/* take_raw_run(seq, limit, record_type, names): RawRecords of the whole events from seq on, up to limit,
   stopping at the first that isn't whole. As ring.py's take_ready_run: copy every payload, one fence, then
   re-check each slot's stamp and the data area's low mark; keep the prefix that passes. */
static PyObject *Taker_take_raw_run(Taker *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "take_raw_run(seq, limit, record_type, names)");
        return NULL;
    }
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[0]);
    if (seq == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    PyObject *record_type = args[2], *names = args[3];
    if (!PyDict_Check(names)) {
        PyErr_SetString(PyExc_TypeError, "names must be a dict");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL || !self->have_view || limit <= 0) return out;
    const char *ring = (const char *)self->view.buf;
    PyObject **payloads = PyMem_Malloc(sizeof(PyObject *) * limit);
    const char **slots = PyMem_Malloc(sizeof(char *) * limit);
    uint64_t *positions = PyMem_Malloc(sizeof(uint64_t) * limit);
    char *categories = PyMem_Malloc((size_t)CATEGORY_BYTES * limit);
    Py_ssize_t copied = 0;
    if (payloads == NULL || slots == NULL || positions == NULL || categories == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (unsigned long long s = seq; copied < limit; s++) {
        const char *slot;
        uint64_t pos;
        PyObject *payload = copy_record(self, s, &slot, &pos);
        if (payload == NULL) {
            if (PyErr_Occurred()) goto fail;
            break; /* not whole (yet): the run ends here */
        }
        payloads[copied] = payload;
        memcpy(categories + (size_t)CATEGORY_BYTES * copied, slot + SLOT_CATEGORY, CATEGORY_BYTES);
        slots[copied] = slot;
        positions[copied] = pos;
        copied++;
    }
    if (copied == 0) goto done;
    full_fence(); /* every copy is done before the re-checks */
    uint64_t low = load_u64(ring + self->hdr_data_low);
    const char *last_field = NULL;
    PyObject *last_name = NULL;
    for (Py_ssize_t i = 0; i < copied; i++) {
        unsigned long long s = seq + (unsigned long long)i;
        if (low > positions[i] || load_u64(slots[i] + SLOT_STAMP) != 2 * (uint64_t)s) break;
        const char *field = categories + (size_t)CATEGORY_BYTES * i; /* copied before the fence, checked after */
        if (last_field == NULL || memcmp(field, last_field, CATEGORY_BYTES) != 0) {
            Py_XDECREF(last_name);
            last_name = category_name(names, field);
            if (last_name == NULL) goto fail;
            last_field = field;
        }
        PyObject *seq_obj = PyLong_FromUnsignedLongLong(s);
        if (seq_obj == NULL) {
            Py_DECREF(last_name);
            goto fail;
        }
        PyObject *call_args[3] = {seq_obj, last_name, payloads[i]};
        PyObject *record = PyObject_Vectorcall(record_type, call_args, 3, NULL);
        Py_DECREF(seq_obj);
        if (record == NULL || PyList_Append(out, record) < 0) {
            Py_XDECREF(record);
            Py_DECREF(last_name);
            goto fail;
        }
        Py_DECREF(record);
    }
    Py_XDECREF(last_name);
done:
    for (Py_ssize_t i = 0; i < copied; i++) Py_DECREF(payloads[i]);
    PyMem_Free(payloads);
    PyMem_Free(slots);
    PyMem_Free(positions);
    PyMem_Free(categories);
    return out;
fail:
    Py_CLEAR(out);
    goto done;
}

static PyObject *Taker_release(Taker *self, PyObject *Py_UNUSED(unused)) {
    release_view(self);
    self->fast = 0;
    Py_RETURN_NONE;
}

/* -- ReadIterator: `for result in reader` ---------------------------------- */

typedef struct {
    PyObject_HEAD
    Taker *taker;
    PyObject *reader;
} ReadIterator;

static int ReadIterator_traverse(ReadIterator *self, visitproc visit, void *arg) {
    Py_VISIT(self->taker);
    Py_VISIT(self->reader);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int ReadIterator_clear(ReadIterator *self) {
    Py_CLEAR(self->taker);
    Py_CLEAR(self->reader);
    return 0;
}

static void ReadIterator_dealloc(ReadIterator *self) { dealloc_cleared((PyObject *)self, (inquiry)ReadIterator_clear); }

static PyObject *ReadIterator_next(ReadIterator *self) {
    if (self->taker == NULL) return NULL;
    PyObject *result = NULL;
    int r = fast_step(self->taker, self->reader, &result);
    if (r) return r > 0 ? result : NULL;
    /* next_slow(reader): the next result, or StopIteration once the ring is closed and drained. */
    result = PyObject_CallOneArg(self->taker->next_slow, self->reader);
    if (result == NULL && PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyErr_Clear();
        ReadIterator_clear(self); /* exhausted for good, as a generator is */
    }
    return result;
}

static PyType_Slot ReadIterator_slots[] = {
    {Py_tp_doc, "The iterator of `for result in reader`: the reader's ReadResults until its ring is closed and "
                "drained."},
    {Py_tp_dealloc, ReadIterator_dealloc},
    {Py_tp_traverse, ReadIterator_traverse},
    {Py_tp_clear, ReadIterator_clear},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, ReadIterator_next},
    {0, NULL}};

static PyType_Spec ReadIterator_spec = {"shmring._hotpath.ReadIterator", sizeof(ReadIterator), 0,
                                        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, ReadIterator_slots};
static PyTypeObject *ReadIteratorType;

static PyObject *Taker_iterate(Taker *self, PyObject *reader) {
    if (self->next_slow == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this RecordTaker is not connected to a reader");
        return NULL;
    }
    ReadIterator *it = PyObject_GC_New(ReadIterator, ReadIteratorType);
    if (it == NULL) return NULL;
    Py_INCREF(ReadIteratorType); /* a heap type's instances own a reference to it */
    it->taker = (Taker *)Py_NewRef(self);
    it->reader = Py_NewRef(reader);
    PyObject_GC_Track(it);
    return (PyObject *)it;
}

/* -- ReadMethod: Reader.read ------------------------------------------------ */

static PyObject *s_state;

static PyObject *ReadMethod_vectorcall(CompiledMethod *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "read() needs the reader");
        return NULL;
    }
    PyObject *reader = args[0];
    /* The reader's `_state`, straight from its instance dict (a plain attribute: Reader sets it in __init__). */
    PyObject **dict = _PyObject_GetDictPtr(reader);
    PyObject *state = dict != NULL && *dict != NULL ? PyDict_GetItemWithError(*dict, s_state) : NULL;
    if (state == NULL || Py_TYPE(state) != TakerType) {
        if (PyErr_Occurred()) return NULL;
        return PyObject_Vectorcall(self->reference, args, nargsf, kwnames);
    }
    Taker *taker = (Taker *)Py_NewRef(state); /* held: the fast step may run Python code (on_progress) */
    PyObject *result = NULL;
    int r = fast_step(taker, reader, &result);
    if (r == 0) /* read_slow(reader, timeout...), with the caller's arguments */
        result = PyObject_Vectorcall(taker->read_slow, args, nargsf, kwnames);
    Py_DECREF(taker);
    return r < 0 ? NULL : result;
}

static PyObject *ReadMethod_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    return compiled_method_new(type, args, kwargs, (vectorcallfunc)ReadMethod_vectorcall);
}

static PyMethodDef Taker_methods[] = {
    {"take_decoded", (PyCFunction)Taker_take_decoded, METH_O,
     "take_decoded(seq) -> Envelope | None | False: the envelope if seq is whole now; None if it is not (or "
     "was overwritten while copied); False if its bytes are not seq's envelope."},
    {"take_raw_run", (PyCFunction)(void (*)(void))Taker_take_raw_run, METH_FASTCALL,
     "take_raw_run(seq, limit, record_type, names) -> list: record_type(seq, category, payload) for each whole "
     "event from seq on, up to limit, stopping at the first that is not whole."},
    {"release", (PyCFunction)Taker_release, METH_NOARGS,
     "Release the view of the ring (before it is unmapped); the fast path ends."},
    {"took", (PyCFunction)Taker_took, METH_O,
     "took(seq) -> bool: seq was delivered (accounting.py's ReaderState.took)."},
    {"passed", (PyCFunction)Taker_passed, METH_O,
     "passed(seq): seq was filtered out (accounting.py's ReaderState.passed)."},
    {"set_filter", (PyCFunction)(void (*)(void))Taker_set_filter, METH_VARARGS | METH_KEYWORDS,
     "set_filter(*, kind_codes, detail_codes, category_fields): the reader's Filter as slot fields (each None for "
     "any): the fast read skips, as filtered, the events it does not accept."},
    {"connect", (PyCFunction)(void (*)(void))Taker_connect, METH_VARARGS | METH_KEYWORDS,
     "connect(*, result_type, on_progress, read_slow, next_slow): what the fast read and iteration build and "
     "call, each function called with the reader first."},
    {"iterate", (PyCFunction)Taker_iterate, METH_O,
     "iterate(reader) -> iterator: `for result in reader` (next_slow(reader) for what the fast path does not "
     "take; its StopIteration ends the iteration)."},
    {NULL}};

static PyMemberDef Taker_members[] = {
    {"cursor", T_LONGLONG, offsetof(Taker, cursor), 0, "The seq of the last event consumed, dropped or filtered out."},
    {"delivered", T_LONGLONG, offsetof(Taker, delivered), 0, NULL},
    {"dropped", T_LONGLONG, offsetof(Taker, dropped), 0, NULL},
    {"filtered", T_LONGLONG, offsetof(Taker, filtered), 0, NULL},
    {"unpublished", T_LONGLONG, offsetof(Taker, unpublished), 0, "Steps taken since the cursor was last published."},
    {"progress_every", T_LONGLONG, offsetof(Taker, progress_every), 0, NULL},
    {"fast", T_BOOL, offsetof(Taker, fast), 0, "Whether the next read may take the next event in C."},
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
    {Py_tp_members, Taker_members},
    {0, NULL}};

PyType_Spec Taker_spec = {"shmring._hotpath.RecordTaker", sizeof(Taker), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
                          Taker_slots};

int taker_init(PyObject *module, PyObject *taker_type) {
    TakerType = (PyTypeObject *)taker_type;
    if (s_state == NULL && (s_state = PyUnicode_InternFromString("_state")) == NULL) return -1;
    ReadIteratorType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &ReadIterator_spec, NULL);
    if (ReadIteratorType == NULL || PyModule_AddObjectRef(module, "ReadIterator", (PyObject *)ReadIteratorType) < 0)
        return -1;
    return add_compiled_method(
        module, "shmring._hotpath.ReadMethod",
        "ReadMethod(reference): Reader.read. For a reader whose `_state` is a RecordTaker it takes the next event in "
        "C when it is whole now, and calls the taker's read_slow otherwise; for any other reader it calls "
        "`reference`, the Python read.",
        ReadMethod_new);
}

/* The reader's fast paths: take one whole record and decode it (ring.py's
   RingReaderCore.take_ready plus reader.py's _decode_checked, step for step),
   and take a run of whole records undecoded (RingReaderCore.take_ready_run,
   building the RawRecords reader.py's read_raw_many would build). */

#include "hotpath.h"

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int have_view;
    uint64_t mask;
    long long data_base, data_bytes, header_bytes, slot_bytes, hdr_data_low;
    PyObject *decode, *decode_error, *envelope_type;
    Py_ssize_t seq_offset;
} Taker;

/* The objects a Taker holds: traverse visits and clear clears each of them. */
#define TAKER_OBJECTS(X) X(decode) X(decode_error) X(envelope_type)

static int Taker_traverse(Taker *self, visitproc visit, void *arg) {
    TAKER_OBJECTS(VISIT_FIELD)
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static void release_view(Taker *self) {
    if (self->have_view) {
        self->have_view = 0;
        PyBuffer_Release(&self->view);
    }
}

static int Taker_clear(Taker *self) {
    release_view(self);
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

static PyObject *Taker_take_decoded(Taker *self, PyObject *arg) {
    unsigned long long seq = PyLong_AsUnsignedLongLong(arg);
    if (seq == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (!self->have_view) Py_RETURN_NONE;
    const char *slot;
    uint64_t pos;
    PyObject *payload = copy_record(self, seq, &slot, &pos);
    if (payload == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    full_fence(); /* the copy is done before the re-check */
    if (load_u64((const char *)self->view.buf + self->hdr_data_low) > pos ||
        load_u64(slot + SLOT_STAMP) != 2 * (uint64_t)seq) {
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
    Py_RETURN_NONE;
}

static PyMethodDef Taker_methods[] = {
    {"take_decoded", (PyCFunction)Taker_take_decoded, METH_O,
     "take_decoded(seq) -> Envelope | None | False: the envelope if seq is whole now; None if it is not (or "
     "was overwritten while copied); False if its bytes are not seq's envelope."},
    {"take_raw_run", (PyCFunction)(void (*)(void))Taker_take_raw_run, METH_FASTCALL,
     "take_raw_run(seq, limit, record_type, names) -> list: record_type(seq, category, payload) for each whole "
     "event from seq on, up to limit, stopping at the first that is not whole."},
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

PyType_Spec Taker_spec = {"shmring._hotpath.RecordTaker", sizeof(Taker), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
                          Taker_slots};

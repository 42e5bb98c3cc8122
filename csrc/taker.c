/* The reader's fast path: take one whole record and decode it. ring.py's
   RingReaderCore.take_ready plus reader.py's _decode_checked, step for step. */

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

static PyObject *Taker_release(Taker *self, PyObject *Py_UNUSED(unused)) {
    release_view(self);
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

PyType_Spec Taker_spec = {"shmring._hotpath.RecordTaker", sizeof(Taker), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
                          Taker_slots};

/* Source.__post_init__, compiled: schema.py's rule that a Source's metadata
   holds its keys sorted (as Go writes a map), for the common case. msgspec
   calls it for every Source it builds, each decoded envelope's included, so
   it must cost next to nothing when there is nothing to do. */

#include "hotpath.h"

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *reference; /* schema.py's __post_init__, for everything but the common case */
} MetadataOrder;

static PyObject *s_metadata;

/* 1 if `metadata` is an exact dict of at most one entry, or of exact strs in ascending order; else 0. */
static int in_order(PyObject *metadata) {
    if (!PyDict_CheckExact(metadata)) return 0;
    if (PyDict_GET_SIZE(metadata) < 2) return 1;
    Py_ssize_t i = 0;
    PyObject *key, *value, *previous = NULL;
    while (PyDict_Next(metadata, &i, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) return 0;
        if (previous != NULL && PyUnicode_Compare(previous, key) >= 0) return 0; /* exact strs: cannot fail */
        previous = key;
    }
    return 1;
}

static PyObject *MetadataOrder_vectorcall(MetadataOrder *self, PyObject *const *args, size_t nargsf,
                                          PyObject *kwnames) {
    if (PyVectorcall_NARGS(nargsf) == 1 && kwnames == NULL) {
        PyObject *metadata = PyObject_GetAttr(args[0], s_metadata);
        if (metadata == NULL) return NULL;
        int done = in_order(metadata);
        Py_DECREF(metadata);
        if (done) Py_RETURN_NONE;
    }
    return PyObject_Vectorcall(self->reference, args, nargsf, kwnames);
}

static PyObject *MetadataOrder_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type)) {
    if (obj == NULL || obj == Py_None) return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

static PyObject *MetadataOrder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *reference;
    if ((kwargs != NULL && PyDict_GET_SIZE(kwargs)) || !PyArg_ParseTuple(args, "O:MetadataOrder", &reference))
        return NULL;
    MetadataOrder *self = (MetadataOrder *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->vectorcall = (vectorcallfunc)MetadataOrder_vectorcall;
    self->reference = Py_NewRef(reference);
    return (PyObject *)self;
}

static int MetadataOrder_traverse(MetadataOrder *self, visitproc visit, void *arg) {
    Py_VISIT(self->reference);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int MetadataOrder_clear(MetadataOrder *self) {
    Py_CLEAR(self->reference);
    return 0;
}

static void MetadataOrder_dealloc(MetadataOrder *self) {
    dealloc_cleared((PyObject *)self, (inquiry)MetadataOrder_clear);
}

static PyMemberDef MetadataOrder_members[] = {
    {"__wrapped__", T_OBJECT, offsetof(MetadataOrder, reference), READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(MetadataOrder, vectorcall), READONLY, NULL},
    {NULL}};

static PyType_Slot MetadataOrder_slots[] = {
    {Py_tp_doc, "MetadataOrder(reference): Source.__post_init__. Returns at once when the source's metadata is a "
                "dict of at most one entry, or of strs already in ascending order; calls reference(source) "
                "otherwise."},
    {Py_tp_new, MetadataOrder_new},
    {Py_tp_dealloc, MetadataOrder_dealloc},
    {Py_tp_traverse, MetadataOrder_traverse},
    {Py_tp_clear, MetadataOrder_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, MetadataOrder_get},
    {Py_tp_members, MetadataOrder_members},
    {0, NULL}};

PyType_Spec MetadataOrder_spec = {
    "shmring._hotpath.MetadataOrder", sizeof(MetadataOrder), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    MetadataOrder_slots};

int metadata_init(void) {
    if (s_metadata == NULL && (s_metadata = PyUnicode_InternFromString("metadata")) == NULL) return -1;
    return 0;
}

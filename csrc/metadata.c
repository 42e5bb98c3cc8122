/* Source.__post_init__, compiled: schema.py's rule that a Source's metadata
   holds its keys sorted (as Go writes a map), for the common case. msgspec
   calls it for every Source it builds, each decoded envelope's included, so
   it must cost next to nothing when there is nothing to do. */

#include "hotpath.h"

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

static PyObject *MetadataOrder_vectorcall(CompiledMethod *self, PyObject *const *args, size_t nargsf,
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

static PyObject *MetadataOrder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    return compiled_method_new(type, args, kwargs, (vectorcallfunc)MetadataOrder_vectorcall);
}

int metadata_init(PyObject *module) {
    if (s_metadata == NULL && (s_metadata = PyUnicode_InternFromString("metadata")) == NULL) return -1;
    return add_compiled_method(
        module, "shmring._hotpath.MetadataOrder",
        "MetadataOrder(reference): Source.__post_init__. Returns at once when the source's metadata is a dict of at "
        "most one entry, or of strs already in ascending order; calls reference(source) otherwise.",
        MetadataOrder_new);
}

/* The module shmring._hotpath: its two functions (fence, compact_json) and the wake word's (from eventcount.c), its
   types (Writer from writer.c; RecordTaker, ReadMethod and ReadIterator from taker.c; MetadataOrder from
   metadata.c) and the dealloc they
   share, its exception (StructLayoutMismatch from config.c), and the parts'
   initialisation. */

#include "hotpath.h"

static PyObject *py_fence(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(unused)) {
    full_fence();
    Py_RETURN_NONE;
}

static PyObject *py_compact_json(PyObject *Py_UNUSED(module), PyObject *obj) {
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

void dealloc_cleared(PyObject *self, inquiry clear) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef module_methods[] = {
    {"fence", py_fence, METH_NOARGS, "A full memory barrier (mfence)."},
    {"compact_json", py_compact_json, METH_O,
     "compact_json(data) -> bytes | None: data validated and compacted, or None when not vouched for."},
    {NULL}};

static PyObject *add_type(PyObject *module, PyType_Spec *spec, const char *name) {
    PyObject *type = PyType_FromModuleAndSpec(module, spec, NULL);
    if (type == NULL) return NULL;
    if (PyModule_AddObject(module, name, type) < 0) {
        Py_DECREF(type);
        return NULL;
    }
    return type; /* borrowed: the module holds it */
}

static int module_exec(PyObject *module) {
    compact_init();
    encode_init();
    if (writer_init() < 0 || config_init(module) < 0) return -1;
    PyObject *taker_type;
    if (add_type(module, &Writer_spec, "Writer") == NULL ||
        (taker_type = add_type(module, &Taker_spec, "RecordTaker")) == NULL ||
        taker_init(module, taker_type) < 0 || metadata_init(module) < 0)
        return -1;
    if (PyModule_AddFunctions(module, eventcount_methods) < 0) return -1;
    return 0;
}

static PyModuleDef_Slot module_slots[] = {{Py_mod_exec, module_exec}, {0, NULL}};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmring._hotpath",
    .m_doc = "The writer's publish fast path and the reader's take-and-decode, compiled; the reference behaviour "
             "is the Python in ring.py, schema.py, session.py and reader.py.",
    .m_methods = module_methods,
    .m_slots = module_slots,
};

PyMODINIT_FUNC PyInit__hotpath(void) { return PyModuleDef_Init(&hotpath_module); }

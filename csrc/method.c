/* Compiled methods with a Python reference (ReadMethod in taker.c, MetadataOrder in metadata.c): what they share.

   Each is a method descriptor (Py_TPFLAGS_METHOD_DESCRIPTOR: `obj.method(...)` calls it with `obj` first and
   binds nothing) whose vectorcall runs the common case in C and calls `reference`, the Python function it
   stands for, for everything else. `reference` is also its `__wrapped__`, for introspection. */

#include "hotpath.h"

PyObject *compiled_method_new(PyTypeObject *type, PyObject *args, PyObject *kwargs, vectorcallfunc call) {
    PyObject *reference;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        PyErr_Format(PyExc_TypeError, "%s(reference) takes no keyword arguments", type->tp_name);
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O", &reference)) return NULL;
    CompiledMethod *self = (CompiledMethod *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->vectorcall = call;
    self->reference = Py_NewRef(reference);
    return (PyObject *)self;
}

static int compiled_method_traverse(CompiledMethod *self, visitproc visit, void *arg) {
    Py_VISIT(self->reference);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int compiled_method_clear(CompiledMethod *self) {
    Py_CLEAR(self->reference);
    return 0;
}

static void compiled_method_dealloc(CompiledMethod *self) {
    dealloc_cleared((PyObject *)self, (inquiry)compiled_method_clear);
}

static PyObject *compiled_method_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type)) {
    if (obj == NULL || obj == Py_None) return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

static PyObject *compiled_method_getattro(PyObject *self, PyObject *name) {
    /* The reference's __doc__, then its __name__, __qualname__ ... where the descriptor has none. */
    if (PyUnicode_CompareWithASCIIString(name, "__doc__") == 0)
        return PyObject_GetAttr(((CompiledMethod *)self)->reference, name);
    PyObject *own = PyObject_GenericGetAttr(self, name);
    if (own != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError)) return own;
    PyErr_Clear();
    return PyObject_GetAttr(((CompiledMethod *)self)->reference, name);
}

static PyMemberDef compiled_method_members[] = {
    {"__wrapped__", T_OBJECT, offsetof(CompiledMethod, reference), READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(CompiledMethod, vectorcall), READONLY, NULL},
    {NULL}};

PyType_Slot compiled_method_slots[] = {
    {Py_tp_dealloc, compiled_method_dealloc},
    {Py_tp_traverse, compiled_method_traverse},
    {Py_tp_clear, compiled_method_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, compiled_method_get},
    {Py_tp_getattro, compiled_method_getattro},
    {Py_tp_members, compiled_method_members},
    {0, NULL}};

int add_compiled_method(PyObject *module, const char *qualified, const char *doc, newfunc new) {
    PyType_Slot slots[sizeof(compiled_method_slots) / sizeof(compiled_method_slots[0]) + 2];
    size_t n = 0;
    slots[n++] = (PyType_Slot){Py_tp_doc, (void *)doc};
    slots[n++] = (PyType_Slot){Py_tp_new, (void *)new};
    for (size_t i = 0; compiled_method_slots[i].slot; i++) slots[n++] = compiled_method_slots[i];
    slots[n] = (PyType_Slot){0, NULL};
    PyType_Spec spec = {qualified, sizeof(CompiledMethod), 0,
                        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
                            Py_TPFLAGS_METHOD_DESCRIPTOR,
                        slots};
    PyObject *type = PyType_FromModuleAndSpec(module, &spec, NULL);
    if (type == NULL) return -1;
    const char *dot = strrchr(qualified, '.');
    if (PyModule_AddObject(module, dot ? dot + 1 : qualified, type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

/* What the extension assumes about the code around it, checked when a Writer
   or a RecordTaker is configured (never per event):
   - layout.py's slot format is the one compiled in (hotpath.h). If not, a
     ValueError: the build is stale, rebuild it.
   - msgspec lays out Event, Source and Envelope as fields.c, writer.c and
     taker.c read and write them. If not, StructLayoutMismatch, and shmring
     (session.py, reader.py) runs the pure-Python path with a warning.

   The msgspec layout assumed: the type is a msgspec Struct whose
   __struct_fields__ are exactly the names expected, in order (the order the
   encoder writes them in and Envelope takes them positionally); its instances
   have a fixed size; and each field is a slot of its own, a T_OBJECT_EX member
   descriptor in the type's dict (NULL when unset) whose offset is
   pointer-aligned, past the object header, inside the instance, and apart
   from every other field, the instance dict and the weakref list. */

#include "hotpath.h"

static PyObject *StructLayoutMismatch;

int config_init(PyObject *module) {
    if (StructLayoutMismatch == NULL) { /* one class per process, even if the module is initialised again */
        StructLayoutMismatch = PyErr_NewExceptionWithDoc(
            "shmring._hotpath.StructLayoutMismatch",
            "msgspec lays out a Struct otherwise than the accelerator reads it; shmring runs the pure-Python path.",
            PyExc_TypeError, NULL);
        if (StructLayoutMismatch == NULL) return -1;
    }
    return PyModule_AddObjectRef(module, "StructLayoutMismatch", StructLayoutMismatch);
}

int read_layout(PyObject *layout, const LayoutField *fields, size_t n) {
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

/* 1 if `type` is a subclass of msgspec.Struct (and so an instance of its metaclass), 0 if not, -1 on error. */
static int is_msgspec_struct(PyTypeObject *type) {
    PyObject *msgspec = PyImport_ImportModule("msgspec");
    if (msgspec == NULL) return -1;
    PyObject *base = PyObject_GetAttrString(msgspec, "Struct");
    Py_DECREF(msgspec);
    if (base == NULL) return -1;
    int is_struct = PyType_Check(base) && PyObject_TypeCheck((PyObject *)type, Py_TYPE(base)) &&
                    PyType_IsSubtype(type, (PyTypeObject *)base);
    Py_DECREF(base);
    return is_struct;
}

/* 1 if `type.__struct_fields__` is exactly `expected`, 0 if not (StructLayoutMismatch set), -1 on error. */
static int has_fields(PyTypeObject *type, PyObject *expected) {
    PyObject *fields = PyObject_GetAttrString((PyObject *)type, "__struct_fields__");
    if (fields == NULL) return -1;
    int same = PyTuple_CheckExact(fields) ? PyObject_RichCompareBool(fields, expected, Py_EQ) : 0;
    if (same == 0)
        PyErr_Format(StructLayoutMismatch, "shmring._hotpath cannot read %R: its fields are %R, it reads %R", type,
                     fields, expected);
    Py_DECREF(fields);
    return same;
}

/* The offset of `type`'s field `name` if it is a slot of its own (see the top of this file), or -1. */
static Py_ssize_t slot_offset(PyTypeObject *type, const char *name, const Py_ssize_t *others, int n_others) {
    PyObject *descr = PyDict_GetItemString(type->tp_dict, name); /* borrowed */
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) return -1;
    const PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    Py_ssize_t offset = member->offset, size = (Py_ssize_t)sizeof(PyObject *);
    if (member->type != T_OBJECT_EX || type->tp_itemsize != 0 || offset < (Py_ssize_t)sizeof(PyObject) ||
        offset % size != 0 || offset + size > type->tp_basicsize || offset == type->tp_dictoffset ||
        offset == type->tp_weaklistoffset)
        return -1;
    for (int i = 0; i < n_others; i++)
        if (others[i] == offset) return -1;
    return offset;
}

int struct_offsets(PyTypeObject *type, const char *const *names, int n, Py_ssize_t *offsets) {
    int is_struct = is_msgspec_struct(type);
    if (is_struct <= 0) {
        if (is_struct == 0)
            PyErr_Format(StructLayoutMismatch, "shmring._hotpath cannot read %R: it is not a msgspec Struct", type);
        return -1;
    }
    PyObject *expected = PyTuple_New(n);
    if (expected == NULL) return -1;
    for (int i = 0; i < n; i++) {
        PyObject *name = PyUnicode_FromString(names[i]);
        if (name == NULL) {
            Py_DECREF(expected);
            return -1;
        }
        PyTuple_SET_ITEM(expected, i, name);
    }
    int same = has_fields(type, expected);
    Py_DECREF(expected);
    if (same <= 0) return -1;
    for (int i = 0; i < n; i++) {
        if ((offsets[i] = slot_offset(type, names[i], offsets, i)) < 0) {
            PyErr_Format(StructLayoutMismatch,
                         "shmring._hotpath cannot read %R: its field %s is not a slot of its own, as it assumes "
                         "msgspec lays out Structs",
                         type, names[i]);
            return -1;
        }
    }
    return 0;
}

/* The layouts the extension reads, checked when a Writer or a RecordTaker is
   configured (never per event): layout.py's slot format, and where msgspec
   keeps each field of Event, Source and Envelope. */

#include "hotpath.h"

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

int struct_offsets(PyTypeObject *type, const char *const *names, int n, Py_ssize_t *offsets) {
    for (int i = 0; i < n; i++) {
        PyObject *descr = PyDict_GetItemString(type->tp_dict, names[i]); /* borrowed */
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a plain struct field", type->tp_name, names[i]);
            return -1;
        }
        offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    return 0;
}

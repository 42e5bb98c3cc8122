/* The ring's wake word: one futex in the registry that every compiled reader
   sleeps on, so a publish wakes all sleepers with one FUTEX_WAKE instead of a
   semaphore post per reader (layout.py's REG_WAKE_WORD; reader.py's _block).

   The handshake (an eventcount), with the flag byte each reader has in the
   writer's scan:
   - reader: flag = WAIT_FUTEX; full fence; word0 = word; re-check the slot;
     sleep while word == word0; flag = 0 (the reader clears its own flag);
   - writer: store the slot; full fence; scan the flags; if one is
     WAIT_FUTEX: word += 1 (a locked add); FUTEX_WAKE all.
   Either the reader's re-check sees the slot, or the writer's scan sees the
   flag, and then the word moves after the reader read it, so FUTEX_WAIT
   returns at once or is woken. The writer never clears a futex flag: it
   could clear a flag raised for a later wait and lose that wake-up, where a
   semaphore's count would have kept it. */

#include "hotpath.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

void eventcount_wake(char *word) {
    __atomic_fetch_add((uint32_t *)word, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* A writable view of `registry` with room for a u32 at `word` (and a byte at `flag` when flag >= 0). */
static int registry_view(PyObject *registry, long long word, long long flag, Py_buffer *view) {
    if (PyObject_GetBuffer(registry, view, PyBUF_WRITABLE) < 0) return -1;
    if (word < 0 || word % 4 || word + 4 > view->len || flag >= view->len) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "offset outside the registry (or a misaligned wake word)");
        return -1;
    }
    return 0;
}

static PyObject *py_arm(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    long long flag, word, value;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "wake_arm(registry, flag_offset, word_offset, flag_value)");
        return NULL;
    }
    if ((flag = PyLong_AsLongLong(args[1])) == -1 && PyErr_Occurred()) return NULL;
    if ((word = PyLong_AsLongLong(args[2])) == -1 && PyErr_Occurred()) return NULL;
    if ((value = PyLong_AsLongLong(args[3])) == -1 && PyErr_Occurred()) return NULL;
    if (flag < 0 || value < 0 || value > 255) {
        PyErr_SetString(PyExc_ValueError, "flag_offset must be in the registry and flag_value a byte");
        return NULL;
    }
    Py_buffer view;
    if (registry_view(args[0], word, flag, &view) < 0) return NULL;
    char *buf = (char *)view.buf;
    __atomic_store_n((unsigned char *)(buf + flag), (unsigned char)value, __ATOMIC_RELAXED);
    full_fence(); /* StoreLoad: the flag is visible before the word and the slot are read */
    uint32_t seen = __atomic_load_n((uint32_t *)(buf + word), __ATOMIC_RELAXED);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(seen);
}

static PyObject *py_wait(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    long long word;
    unsigned long seen;
    double timeout;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "wake_wait(registry, word_offset, seen, timeout_s)");
        return NULL;
    }
    if ((word = PyLong_AsLongLong(args[1])) == -1 && PyErr_Occurred()) return NULL;
    if ((seen = PyLong_AsUnsignedLong(args[2])) == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    if ((timeout = PyFloat_AsDouble(args[3])) == -1.0 && PyErr_Occurred()) return NULL;
    if (!(timeout >= 0) || timeout > 1e9 || seen > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "timeout_s must be a finite number >= 0 and seen a u32");
        return NULL;
    }
    Py_buffer view;
    if (registry_view(args[0], word, -1, &view) < 0) return NULL; /* held: the mapping stays while we sleep */
    uint32_t *addr = (uint32_t *)((char *)view.buf + word);
    struct timespec ts = {(time_t)timeout, (long)((timeout - floor(timeout)) * 1e9)};
    long rc;
    int err;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_futex, addr, FUTEX_WAIT, (uint32_t)seen, &ts, NULL, 0);
    err = errno;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    /* 0: woken; EAGAIN: the word had moved already; EINTR: a signal (callers re-check, as after a wake). */
    if (rc == 0 || err == EAGAIN || err == EINTR) Py_RETURN_TRUE;
    if (err == ETIMEDOUT) Py_RETURN_FALSE;
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyObject *py_wake(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    long long word;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "wake_all(registry, word_offset)");
        return NULL;
    }
    if ((word = PyLong_AsLongLong(args[1])) == -1 && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (registry_view(args[0], word, -1, &view) < 0) return NULL;
    eventcount_wake((char *)view.buf + word);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

PyMethodDef eventcount_methods[] = {
    {"wake_arm", (PyCFunction)(void (*)(void))py_arm, METH_FASTCALL,
     "wake_arm(registry, flag_offset, word_offset, flag_value) -> int: raise the wait flag, fence, and return the "
     "wake word to sleep on."},
    {"wake_wait", (PyCFunction)(void (*)(void))py_wait, METH_FASTCALL,
     "wake_wait(registry, word_offset, seen, timeout_s) -> bool: sleep while the wake word is `seen`, at most "
     "timeout_s; False on timeout."},
    {"wake_all", (PyCFunction)(void (*)(void))py_wake, METH_FASTCALL,
     "wake_all(registry, word_offset): move the wake word and wake every sleeper."},
    {NULL}};

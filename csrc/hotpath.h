/* shmring._hotpath: the writer's publish fast path and the reader's take-and-decode, compiled.

Rules:
- This is an accelerator, never the reference. ring.py, schema.py,
  session.py and reader.py hold the reference behaviour in Python; without a
  C compiler shmring runs on them alone.
- The fast path only vouches for the common case: an exact Event whose fields
  are already valid, a category seen before, data that is absent or already
  compact JSON, no gating wait, nothing over the size limit. For anything
  else it calls the Python slow path (``slow(event)``) before writing a byte,
  so every error and every rare rule has one implementation.
- Whatever it accepts it must encode byte for byte as msgspec does
  (tests/unit/test_hotpath.py checks this against msgspec, differentially).
- It runs entirely under the GIL and never releases it, so it is atomic with
  respect to the writer's other threads. While the slow path runs
  (``slow_depth`` > 0, possibly asleep waiting for a flusher) it defers.
- It reads and writes Struct fields by offset and slots by layout.py's
  offsets, so it checks at configuration (config.c) that layout.py's slot
  format is the one it was built for (a ValueError if not: rebuild it) and
  that msgspec lays Structs out as it assumes (StructLayoutMismatch if not:
  shmring then runs the pure-Python path, with a warning).

Memory ordering: the same seqlock protocol as ring.py (read its docstring),
with real fences: an mfence (``__atomic_thread_fence(__ATOMIC_SEQ_CST)``)
where ring.py uses ``full_fence``, and an 8-byte atomic store for each stamp.

The parts, one extension (setup.py builds them together):
- compact.c: the JSON validator and compactor;
- encode.c: the byte-exact envelope encoder;
- config.c: the layout checks (layout.py's slot format, msgspec's Structs);
- fields.c: one Event's fields, read by offset;
- writer.c: the Writer type, its state and the publish fast path;
- taker.c: the RecordTaker type, the reader's take-and-decode, its cursor
  and its per-event read (ReadMethod) and iteration (ReadIterator);
- metadata.c: Source.__post_init__ (MetadataOrder), which every decode calls;
- method.c: what ReadMethod and MetadataOrder share (compiled methods with a
  Python reference);
- eventcount.c: the ring's wake word (one futex for every compiled sleeper);
- module.c: the module, its functions and its initialisation.
This header declares what one part uses of another; everything else is static.
*/

#ifndef SHMRING_HOTPATH_H
#define SHMRING_HOTPATH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#if !defined(__x86_64__)
#error "shmring._hotpath is built for x86-64 only (see ring.py's memory-ordering assumption)"
#endif

/* The slot, as layout.py's SLOT (config.c checks the format at configuration). */
#define SLOT_FORMAT "<QQIBBBBQ32s"
#define SLOT_STAMP 0
#define SLOT_POS 8
#define SLOT_LEN 16
#define SLOT_KIND 20
#define SLOT_DETAIL 21
#define SLOT_FLAGS 22
#define SLOT_PAD 23
#define SLOT_TS 24
#define SLOT_CATEGORY 32
#define CATEGORY_BYTES 32

static inline void full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline void store_u64(char *p, uint64_t v) { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELAXED); }

static inline uint64_t load_u64(const char *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED); }

/* The UTF-8 of an exact str, or NULL (error cleared) when it has none (lone surrogates). */
static inline const char *utf8_of(PyObject *s, Py_ssize_t *n) {
    const char *u = PyUnicode_AsUTF8AndSize(s, n);
    if (u == NULL) PyErr_Clear();
    return u;
}

/* The bytes a JSON string must escape: '"', '\\' and control characters. */
#define JSON_NEEDS_ESCAPE(ch) ((ch) < 0x20 || (ch) == '"' || (ch) == '\\')

/* -- compact.c ------------------------------------------------------------- */

void compact_init(void);

/* Validate `data` as JSON and write it to `out` without insignificant
   whitespace, every token's bytes as they are (msgspec.json.format(data,
   indent=-1)). The output length, or -1 when not vouched for. `out` must have
   room for `n` bytes; compaction never grows the input. */
Py_ssize_t compact_json(const unsigned char *data, Py_ssize_t n, unsigned char *out);

/* -- config.c -------------------------------------------------------------- */

/* Adds shmring._hotpath.StructLayoutMismatch (a TypeError), which struct_offsets raises, to `module`. */
int config_init(PyObject *module);

typedef struct {
    const char *key;
    long long *dst;
} LayoutField;

/* Check the layout's slot format against the one compiled in, and read
   `fields` from layout.ACCELERATOR_LAYOUT. 0, or -1 with an exception. */
int read_layout(PyObject *layout, const LayoutField *fields, size_t n);

/* The offsets of `type`'s fields `names` (all of its fields, in order), after
   checking that msgspec lays it out as this extension assumes. 0, or -1 with
   StructLayoutMismatch (or another exception). */
int struct_offsets(PyTypeObject *type, const char *const *names, int n, Py_ssize_t *offsets);

/* -- fields.c -------------------------------------------------------------- */

/* Each Struct's fields, in declaration order: the order msgspec encodes them in. */
enum { F_TS, F_TYPE, F_CATEGORY, F_SOURCE, F_DETAIL, F_URL, F_DATA, F_TRUNCATED, EVENT_FIELDS };
enum { F_KIND, F_SOURCE_EVENT, F_METADATA, SOURCE_FIELDS };
enum { F_CAPTURE_SESSION_ID, F_SEQ, F_ENVELOPE_EVENT, ENVELOPE_FIELDS };
extern const char *const EVENT_FIELD_NAMES[EVENT_FIELDS];
extern const char *const SOURCE_FIELD_NAMES[SOURCE_FIELDS];
extern const char *const ENVELOPE_FIELD_NAMES[ENVELOPE_FIELDS];

/* One Event's fields, borrowed from it while the fast path runs. */
typedef struct {
    PyObject *type, *category, *source, *kind, *source_event, *metadata, *detail, *url, *data, *truncated, *ts;
    long long ts_value;
} EventFields;

int fields_load(EventFields *f, PyObject *event, PyTypeObject *source_type, const Py_ssize_t *ev_off,
                const Py_ssize_t *src_off);
int fields_unchanged(const EventFields *f, PyObject *event, const Py_ssize_t *ev_off, const Py_ssize_t *src_off,
                     int stamped);
void fields_clear(EventFields *f);

/* -- encode.c -------------------------------------------------------------- */

void encode_init(void);

/* Grow *buf (of *size bytes) to hold at least `need`, doubling from 4 KiB. 0, or -1 with MemoryError. */
int ensure_room(void **buf, Py_ssize_t *size, Py_ssize_t need);

/* Encode the envelope into *scratch (grown as needed); its length, or -1 (not vouched, error cleared). */
Py_ssize_t encode_envelope(char **scratch, Py_ssize_t *scratch_size, Py_ssize_t max_record_bytes, PyObject *csid,
                           uint64_t seq, const EventFields *f, long long ts, PyObject *detail, const char *data,
                           Py_ssize_t data_len);

/* -- eventcount.c ---------------------------------------------------------- */

/* Move the wake word (a locked add: a full barrier) and FUTEX_WAKE every sleeper on it. */
void eventcount_wake(char *word);

/* wake_arm, wake_wait and wake_all, for the module. */
extern PyMethodDef eventcount_methods[];

/* A wait flag's values (layout.py's WAIT_SEMAPHORE, WAIT_FUTEX). */
#define WAIT_SEMAPHORE 1
#define WAIT_FUTEX 2

/* -- method.c -------------------------------------------------------------- */

/* A compiled method with a Python reference: a method descriptor whose vectorcall runs the common case and calls
   `reference` (the Python function it stands for) for the rest. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *reference;
} CompiledMethod;

/* A new CompiledMethod of `type` from args (reference), calling through `call`: a tp_new's body. */
PyObject *compiled_method_new(PyTypeObject *type, PyObject *args, PyObject *kwargs, vectorcallfunc call);

/* Make and add to `module` the CompiledMethod type `qualified` (a static string: "shmring._hotpath.X"). */
int add_compiled_method(PyObject *module, const char *qualified, const char *doc, newfunc new);

/* -- metadata.c ------------------------------------------------------------ */

int metadata_init(PyObject *module);

/* -- writer.c, taker.c, module.c ------------------------------------------- */

int writer_init(void);
extern PyType_Spec Writer_spec;
extern PyType_Spec Taker_spec;

/* After the RecordTaker type is made: remembers it, and adds the ReadIterator and ReadMethod types to `module`. */
int taker_init(PyObject *module, PyObject *taker_type);

/* The tp_dealloc of both types (GC-tracked heap types): untrack, `clear`, free, release the type. */
void dealloc_cleared(PyObject *self, inquiry clear);

/* For a type's list of the objects it holds, X(field) X(field) ...: its tp_traverse and its tp_clear. */
#define VISIT_FIELD(field) Py_VISIT(self->field);
#define CLEAR_FIELD(field) Py_CLEAR(self->field);

#endif

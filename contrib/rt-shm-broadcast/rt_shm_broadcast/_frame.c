/* The usual step frame in C: one call writes a step (header and nine arrays) into a
 * frame, one call turns a received frame into a StepMetadata of views of it.
 *
 * Both are accelerators of the reference code in codec.py / decode.py, not a second
 * definition of the layout's rules: they handle the common case (a well-formed decode
 * step whose sampling records are the previous frame's) and return a "not mine" value
 * for everything else (control frames, new sampling records, anything malformed or too
 * large), and the Python path then encodes it, decodes it, or raises the error that
 * names the problem. A frame read_step accepts is one the Python decoder accepts.
 *
 * Each call does what ~40 Python-level operations did (attribute reads, typecode and
 * length checks, header packing and unpacking, copies, nine slices, sums and range
 * checks over the sequences), which is most of a step's broadcast latency.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <structmember.h>
#include <string.h>

#define NUM_ARRAYS 9
#define PER_SEQ_ARRAYS 7 /* the first seven arrays have one entry per sequence */
#define HEADER_BYTES 48
#define LAYOUT_VERSION 3
#define KIND_STEP 1
#define SAME_SAMPLING 1

/* Header field offsets (codec.py's _HEADER, little-endian). */
#define H_LAYOUT 4
#define H_SCHEMA 6
#define H_KIND 8
#define H_FLAGS 9
#define H_IDENT 12
#define H_TOTAL 20
#define H_N 24
#define H_TOKENS 28
#define H_BLOCKS 32
#define H_RECORDS 36
#define H_RECORD_BYTES 40

#if PY_BIG_ENDIAN
#error "the frame layout is little-endian and this module copies native arrays"
#endif

static const char *FORMATS = "qiiiiibii"; /* frame order, as codec.STEP_TYPECODES */
static PyObject *ARRAY_NAMES[NUM_ARRAYS];  /* StepMetadata field names, frame order */
static PyObject *STEP_ID, *VERSION;

/* StepMetadata's fields in order (decode.py checks them against attrs at import), and
 * where each lives in an instance: read_step fills a new one as object.__new__ plus
 * the slot descriptors' __set__ would (the frozen record has no __init__ work to skip
 * besides that), without twelve Python-level calls. */
#define NUM_FIELDS 12
static const char *FIELDS[NUM_FIELDS] = {
    "step_id",    "seq_ids",   "token_counts", "start_positions", "num_generated", "sample",
    "sampling_index", "table_lens", "token_ids", "block_ids",       "sampling",      "version"};
static PyTypeObject *step_type;
static Py_ssize_t field_offsets[NUM_FIELDS];

/* Learn where the slots of `type` are; 0, or -1 with TypeError when it is not a
 * slotted class with exactly these object fields. */
static int learn_step_type(PyObject *type) {
    if (!PyType_Check(type)) {
        PyErr_SetString(PyExc_TypeError, "read_step needs the StepMetadata class");
        return -1;
    }
    for (int i = 0; i < NUM_FIELDS; i++) {
        PyObject *d = PyObject_GetAttrString(type, FIELDS[i]);
        if (!d)
            return -1;
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) &&
                 ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok)
            field_offsets[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", ((PyTypeObject *)type)->tp_name,
                         FIELDS[i]);
            return -1;
        }
    }
    Py_XSETREF(step_type, (PyTypeObject *)Py_NewRef(type));
    return 0;
}

static PyObject *new_step(PyObject *const *values) {
    PyObject *step = step_type->tp_alloc(step_type, 0);
    if (!step)
        return NULL;
    for (int i = 0; i < NUM_FIELDS; i++)
        *(PyObject **)((char *)step + field_offsets[i]) = Py_NewRef(values[i]);
    return step;
}

static Py_ssize_t pad8(Py_ssize_t n) { return (8 - n % 8) % 8; }

static uint32_t get_u32(const char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static void put_u32(char *p, uint32_t v) { memcpy(p, &v, 4); }

/* write_step(buf, step, flags, n_records, record_bytes) -> offset where the sampling
 * records go (the frame ends record_bytes later), or -1: not handled here (an array
 * of another type or length, a step id or version out of range, a frame larger than
 * buf); the caller's Python path then writes the frame or names the problem. */
static PyObject *write_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "write_step(buf, step, flags, n_records, record_bytes)");
        return NULL;
    }
    long flags = PyLong_AsLong(args[2]);
    Py_ssize_t n_records = PyLong_AsSsize_t(args[3]);
    Py_ssize_t record_bytes = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer dst, views[NUM_ARRAYS];
    if (PyObject_GetBuffer(args[0], &dst, PyBUF_WRITABLE) < 0)
        return NULL;
    int acquired = 0;
    Py_ssize_t result = -1;
    PyObject *step = args[1];
    long long ident = 0;
    long version = -1;
    PyObject *v = PyObject_GetAttr(step, STEP_ID);
    if (v) {
        ident = PyLong_AsLongLong(v);
        Py_DECREF(v);
    }
    v = PyObject_GetAttr(step, VERSION);
    if (v) {
        version = PyLong_AsLong(v);
        Py_DECREF(v);
    }
    if (PyErr_Occurred() || version < 0 || version > 0xFFFF || flags < 0 || flags > 0xFF ||
        n_records < 0 || n_records > UINT32_MAX || record_bytes < 0 || record_bytes > UINT32_MAX)
        goto done;
    for (int i = 0; i < NUM_ARRAYS; i++) {
        PyObject *array = PyObject_GetAttr(step, ARRAY_NAMES[i]);
        if (!array)
            goto done;
        int got = PyObject_GetBuffer(array, &views[i], PyBUF_FORMAT | PyBUF_C_CONTIGUOUS);
        Py_DECREF(array);
        if (got < 0)
            goto done;
        acquired++;
        const char *f = views[i].format ? views[i].format : "B";
        if (f[0] == '@' || f[0] == '<' || f[0] == '=')
            f++;
        if (f[0] != FORMATS[i] || f[1] != '\0' ||
            (i < PER_SEQ_ARRAYS && views[i].len != views[0].len / 8 * views[i].itemsize))
            goto done;
    }
    Py_ssize_t n = views[0].len / 8, n_tokens = views[7].len / 4, n_blocks = views[8].len / 4;
    Py_ssize_t records_at = HEADER_BYTES + 29 * n + pad8(n) + 4 * (n_tokens + n_blocks);
    Py_ssize_t total = records_at + record_bytes;
    if (total > dst.len || total > UINT32_MAX)
        goto done;
    char *out = (char *)dst.buf;
    memset(out, 0, HEADER_BYTES);
    memcpy(out, "RTSB", 4);
    uint16_t u16 = LAYOUT_VERSION;
    memcpy(out + H_LAYOUT, &u16, 2);
    u16 = (uint16_t)version;
    memcpy(out + H_SCHEMA, &u16, 2);
    out[H_KIND] = KIND_STEP;
    out[H_FLAGS] = (char)flags;
    int64_t id64 = (int64_t)ident;
    memcpy(out + H_IDENT, &id64, 8);
    put_u32(out + H_TOTAL, (uint32_t)total);
    put_u32(out + H_N, (uint32_t)n);
    put_u32(out + H_TOKENS, (uint32_t)n_tokens);
    put_u32(out + H_BLOCKS, (uint32_t)n_blocks);
    put_u32(out + H_RECORDS, (uint32_t)n_records);
    put_u32(out + H_RECORD_BYTES, (uint32_t)record_bytes);
    Py_ssize_t at = HEADER_BYTES;
    for (int i = 0; i < NUM_ARRAYS; i++) {
        memcpy(out + at, views[i].buf, views[i].len);
        at += views[i].len;
        if (i == PER_SEQ_ARRAYS - 1) { /* the int8 flags: pad so what follows is aligned */
            memset(out + at, 0, pad8(n));
            at += pad8(n);
        }
    }
    result = at;
done:
    PyErr_Clear();
    for (int i = 0; i < acquired; i++)
        PyBuffer_Release(&views[i]);
    PyBuffer_Release(&dst);
    return PyLong_FromSsize_t(result);
}

/* A slice [lo, lo + len) of a pre-cast view, or NULL (no error set) when out of range. */
static PyObject *view(PyObject *whole, Py_ssize_t lo, Py_ssize_t len) {
    Py_ssize_t size = PyObject_Length(whole);
    if (size < 0 || lo < 0 || len < 0 || lo + len > size) {
        PyErr_Clear();
        return NULL;
    }
    return PySequence_GetSlice(whole, lo, lo + len);
}

/* The per-buffer cache read_step keeps (a list the caller makes once per buffer). */
enum { C_AS_Q, C_AS_I, C_AS_B, C_N, C_TOKENS, C_BLOCKS, C_VIEWS, C_LEN = C_VIEWS + NUM_ARRAYS };

/* Store the views of a frame of n sequences, n_tokens tokens and n_blocks block ids in
 * the cache, reusing those of the last frame read from this buffer where its counts
 * match (a decode batch keeps its size for many steps, so usually only the block ids'
 * view is new, or none). Returns 0, or -1 (no error set) when a view is out of range. */
static int cache_views(PyObject *cache, Py_ssize_t n, Py_ssize_t n_tokens, Py_ssize_t n_blocks) {
    PyObject *fresh[NUM_ARRAYS] = {NULL};
    /* The first view to make: none, the block ids' only, or all nine. */
    int first = 0;
    if (PyLong_AsSsize_t(PyList_GET_ITEM(cache, C_N)) == n &&
        PyLong_AsSsize_t(PyList_GET_ITEM(cache, C_TOKENS)) == n_tokens)
        first = PyLong_AsSsize_t(PyList_GET_ITEM(cache, C_BLOCKS)) == n_blocks ? NUM_ARRAYS : 8;
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t ints = HEADER_BYTES + 8 * n, i0 = ints / 4, t0 = (ints + 21 * n + pad8(n)) / 4;
    PyObject *as_q = PyList_GET_ITEM(cache, C_AS_Q), *as_i = PyList_GET_ITEM(cache, C_AS_I);
    for (int i = first; i < NUM_ARRAYS; i++) {
        if (i == 0)
            fresh[i] = view(as_q, HEADER_BYTES / 8, n);
        else if (i < 6)
            fresh[i] = view(as_i, i0 + (i - 1) * n, n);
        else if (i == 6)
            fresh[i] = view(PyList_GET_ITEM(cache, C_AS_B), ints + 20 * n, n);
        else if (i == 7)
            fresh[i] = view(as_i, t0, n_tokens);
        else
            fresh[i] = view(as_i, t0 + n_tokens, n_blocks);
        if (!fresh[i]) {
            for (int j = first; j < i; j++)
                Py_DECREF(fresh[j]);
            PyErr_Clear();
            return -1;
        }
    }
    for (int i = first; i < NUM_ARRAYS; i++)
        PyList_SetItem(cache, C_VIEWS + i, fresh[i]); /* steals fresh[i], drops the old */
    if (first < NUM_ARRAYS) {
        PyList_SetItem(cache, C_N, PyLong_FromSsize_t(n));
        PyList_SetItem(cache, C_TOKENS, PyLong_FromSsize_t(n_tokens));
        PyList_SetItem(cache, C_BLOCKS, PyLong_FromSsize_t(n_blocks));
    }
    return PyErr_Occurred() ? (PyErr_Clear(), -1) : 0;
}

/* read_step(buf, cache, schema, sampling, step_type) -> a step_type (StepMetadata)
 * of the step id, the nine arrays as views of buf, sampling and schema, or None: not handled here (a control
 * frame, a frame that carries sampling records, any problem at all); the caller's
 * Python path then decodes it or names the problem. cache is the caller's list for
 * this buffer: buf cast to int64, int32 and int8 (each array is one slice of one of
 * them: the layout starts every array at a multiple of its item size), then the counts
 * and views of the last frame read from it. sampling is the previous frame's records
 * (None before the first). */
static PyObject *read_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyList_Check(args[1]) || PyList_GET_SIZE(args[1]) != C_LEN) {
        PyErr_SetString(PyExc_TypeError,
                        "read_step(buf, cache: list of 15, schema, sampling, step_type)");
        return NULL;
    }
    if ((PyObject *)step_type != args[4] && learn_step_type(args[4]) < 0)
        return NULL;
    PyObject *cache = args[1], *sampling = args[3];
    if (sampling == Py_None || !PyTuple_Check(sampling))
        Py_RETURN_NONE;
    long schema = PyLong_AsLong(args[2]);
    if (schema == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer src;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *p = (const char *)src.buf;
    PyObject *result = NULL;
    uint16_t layout, frame_schema;
    int64_t ident;
    if (src.len < HEADER_BYTES)
        goto not_mine;
    memcpy(&layout, p + H_LAYOUT, 2);
    memcpy(&frame_schema, p + H_SCHEMA, 2);
    memcpy(&ident, p + H_IDENT, 8);
    Py_ssize_t total = get_u32(p + H_TOTAL), n = get_u32(p + H_N);
    Py_ssize_t n_tokens = get_u32(p + H_TOKENS), n_blocks = get_u32(p + H_BLOCKS);
    if (memcmp(p, "RTSB", 4) || layout != LAYOUT_VERSION || frame_schema != schema ||
        p[H_KIND] != KIND_STEP || p[H_FLAGS] != SAME_SAMPLING || get_u32(p + H_RECORDS) ||
        get_u32(p + H_RECORD_BYTES) || total > src.len ||
        total != HEADER_BYTES + 29 * n + pad8(n) + 4 * (n_tokens + n_blocks))
        goto not_mine;
    /* The per-sequence checks decode.py's _seq_problem makes: no negative value,
     * counts that add up to the header's, sampling indexes in range, flags 0 or 1. */
    Py_ssize_t n_sampling = PyTuple_GET_SIZE(sampling), ints = HEADER_BYTES + 8 * n;
    long long tokens = 0, blocks = 0;
    int32_t value;
    for (Py_ssize_t k = 0; k < 5 * n; k++) {
        memcpy(&value, p + ints + 4 * k, 4);
        if (value < 0 || (k >= 3 * n && k < 4 * n && value >= n_sampling))
            goto not_mine;
        if (k < n)
            tokens += value;
        else if (k >= 4 * n)
            blocks += value;
    }
    if (tokens != n_tokens || blocks != n_blocks)
        goto not_mine;
    const unsigned char *flags = (const unsigned char *)p + ints + 20 * n;
    for (Py_ssize_t k = 0; k < n; k++)
        if (flags[k] > 1)
            goto not_mine;
    if (cache_views(cache, n, n_tokens, n_blocks) < 0)
        goto not_mine;
    PyObject *id_obj = PyLong_FromLongLong(ident);
    if (!id_obj)
        goto done;
    /* StepMetadata field order: step_id, seq_ids, token_counts, start_positions,
     * num_generated, sample, sampling_index, table_lens, token_ids, block_ids,
     * sampling, version; the frame's: seq_ids, counts, starts, generated, index,
     * table_lens, sample, token_ids, block_ids. */
    static const int order[NUM_ARRAYS] = {0, 1, 2, 3, 6, 4, 5, 7, 8};
    PyObject *call[12];
    call[0] = id_obj;
    for (int i = 0; i < NUM_ARRAYS; i++)
        call[1 + i] = PyList_GET_ITEM(cache, C_VIEWS + order[i]);
    call[10] = sampling;
    call[11] = args[2];
    result = new_step(call);
    Py_DECREF(id_obj);
    goto done; /* result set (or NULL with a MemoryError) */
not_mine:
    PyErr_Clear();
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&src);
    return result;
}

static PyMethodDef methods[] = {
    {"write_step", (PyCFunction)(void (*)(void))write_step, METH_FASTCALL,
     "Write a step's header and arrays into a frame; -1 when the Python path must."},
    {"read_step", (PyCFunction)(void (*)(void))read_step, METH_FASTCALL,
     "Decode the usual step frame as views; None when the Python path must."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_frame", NULL, -1, methods};

PyMODINIT_FUNC PyInit__frame(void) {
    PyObject *mod = NULL, *fields = PyTuple_New(NUM_FIELDS);
    if (!fields)
        return NULL;
    for (int i = 0; i < NUM_FIELDS; i++) {
        PyObject *name = PyUnicode_FromString(FIELDS[i]);
        if (!name)
            goto fail;
        PyTuple_SET_ITEM(fields, i, name);
    }
    static const char *names[NUM_ARRAYS] = {
        "seq_ids",        "token_counts", "start_positions", "num_generated", "sampling_index",
        "table_lens",     "sample",       "token_ids",       "block_ids"};
    for (int i = 0; i < NUM_ARRAYS; i++)
        if (!(ARRAY_NAMES[i] = PyUnicode_InternFromString(names[i])))
            goto fail;
    if (!(STEP_ID = PyUnicode_InternFromString("step_id")) ||
        !(VERSION = PyUnicode_InternFromString("version")))
        goto fail;
    mod = PyModule_Create(&module);
    if (mod && PyModule_AddObject(mod, "STEP_FIELDS", fields) == 0)
        return mod; /* the module now holds fields */
fail:
    Py_XDECREF(mod);
    Py_DECREF(fields);
    return NULL;
}

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

/* read_step(buf, as_q, as_i, as_b, schema, sampling, new_step) -> new_step(step id,
 * the nine arrays as views, sampling, schema), or None: not handled here (a control
 * frame, a frame that carries sampling records, any problem at all); the caller's
 * Python path then decodes it or names the problem. as_q / as_i / as_b are buf cast
 * to int64 / int32 / int8 (the caller keeps them per buffer), so each array is one
 * slice: the layout starts every array at a multiple of its item size. sampling is
 * the previous frame's records (None before the first). */
static PyObject *read_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "read_step(buf, as_q, as_i, as_b, schema, sampling, new_step)");
        return NULL;
    }
    PyObject *sampling = args[5];
    if (sampling == Py_None || !PyTuple_Check(sampling))
        Py_RETURN_NONE;
    long schema = PyLong_AsLong(args[4]);
    if (schema == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer src;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *p = (const char *)src.buf;
    PyObject *result = NULL, *arrays[NUM_ARRAYS] = {NULL};
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
    Py_ssize_t i0 = ints / 4, t0 = (ints + 20 * n + n + pad8(n)) / 4;
    arrays[0] = view(args[1], HEADER_BYTES / 8, n);
    for (int i = 1; i < 6; i++)
        arrays[i] = view(args[2], i0 + (i - 1) * n, n);
    arrays[6] = view(args[3], ints + 20 * n, n);
    arrays[7] = view(args[2], t0, n_tokens);
    arrays[8] = view(args[2], t0 + n_tokens, n_blocks);
    for (int i = 0; i < NUM_ARRAYS; i++)
        if (!arrays[i])
            goto not_mine;
    /* StepMetadata field order: step_id, seq_ids, token_counts, start_positions,
     * num_generated, sample, sampling_index, table_lens, token_ids, block_ids,
     * sampling, version; the frame's: seq_ids, counts, starts, generated, index,
     * table_lens, sample, token_ids, block_ids. */
    PyObject *id_obj = PyLong_FromLongLong(ident);
    if (!id_obj)
        goto error;
    PyObject *call[12] = {id_obj,    arrays[0], arrays[1], arrays[2], arrays[3], arrays[6],
                          arrays[4], arrays[5], arrays[7], arrays[8], sampling,  args[4]};
    result = PyObject_Vectorcall(args[6], call, 12, NULL);
    Py_DECREF(id_obj);
    goto error; /* result set (or NULL with the callee's error): release and return */
not_mine:
    PyErr_Clear();
    result = Py_NewRef(Py_None);
error:
    for (int i = 0; i < NUM_ARRAYS; i++)
        Py_XDECREF(arrays[i]);
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
    static const char *names[NUM_ARRAYS] = {
        "seq_ids",        "token_counts", "start_positions", "num_generated", "sampling_index",
        "table_lens",     "sample",       "token_ids",       "block_ids"};
    for (int i = 0; i < NUM_ARRAYS; i++)
        if (!(ARRAY_NAMES[i] = PyUnicode_InternFromString(names[i])))
            return NULL;
    if (!(STEP_ID = PyUnicode_InternFromString("step_id")) ||
        !(VERSION = PyUnicode_InternFromString("version")))
        return NULL;
    return PyModule_Create(&module);
}

/* The per-step loops of the frame codec in C: copying a step's nine arrays into a
 * frame, and checking a received frame's per-sequence arrays. codec.py and decode.py
 * hold the same logic in Python and use it when this module was not built.
 *
 * Each function does what ~20 Python-level operations did (typecode and length checks,
 * a join, slice copies; sums, a max, sign and flag checks over the 64 sequences of a
 * decode batch), which is most of a step's broadcast latency on a 2-core machine.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define NUM_ARRAYS 9
#define PER_SEQ_ARRAYS 7 /* the first seven arrays have one entry per sequence */

/* write_arrays(buf, offset, arrays, formats, n) -> end offset, or -1 when an array has
 * the wrong typecode or a per-sequence one does not hold n entries (the caller's Python
 * check then says which). Raises ValueError when the arrays do not fit in buf. */
static PyObject *write_arrays(PyObject *self, PyObject *args) {
    Py_buffer dst;
    Py_ssize_t offset, n;
    PyObject *arrays;
    const char *formats;
    Py_ssize_t formats_len;
    if (!PyArg_ParseTuple(args, "w*nO!s#n", &dst, &offset, &PyTuple_Type, &arrays, &formats,
                          &formats_len, &n))
        return NULL;
    if (PyTuple_GET_SIZE(arrays) != NUM_ARRAYS || formats_len != NUM_ARRAYS) {
        PyBuffer_Release(&dst);
        PyErr_SetString(PyExc_TypeError, "write_arrays takes nine arrays and nine typecodes");
        return NULL;
    }
    Py_buffer views[NUM_ARRAYS];
    int acquired = 0;
    Py_ssize_t result = offset, total = offset;
    for (int i = 0; i < NUM_ARRAYS; i++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(arrays, i), &views[i],
                               PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
            PyErr_Clear();
            result = -1;
            goto done;
        }
        acquired++;
        const char *f = views[i].format ? views[i].format : "B";
        if (f[0] == '@' || f[0] == '<' || f[0] == '=')
            f++;
        if (f[0] != formats[i] || f[1] != '\0' ||
            (i < PER_SEQ_ARRAYS && views[i].len != n * views[i].itemsize)) {
            result = -1;
            goto done;
        }
        total += views[i].len;
    }
    if (offset < 0 || total > dst.len) {
        PyErr_Format(PyExc_ValueError, "the arrays need %zd bytes, the frame has %zd",
                     total, dst.len);
        result = -1000;
        goto done;
    }
    for (int i = 0; i < NUM_ARRAYS; i++) {
        memcpy((char *)dst.buf + result, views[i].buf, views[i].len);
        result += views[i].len;
    }
done:
    for (int i = 0; i < acquired; i++)
        PyBuffer_Release(&views[i]);
    PyBuffer_Release(&dst);
    if (result == -1000)
        return NULL;
    return PyLong_FromSsize_t(result);
}

/* check_seqs(buf, offset, n, n_tokens, n_blocks, n_sampling) -> 0 when the n sequences'
 * arrays at buf[offset:] (five int32 arrays, then n int8 sample flags) agree with the
 * header; else 1: token counts do not add up, 2: table lengths do not add up,
 * 3: a negative value, 4: a sampling index out of range, 5: a flag neither 0 nor 1. */
static PyObject *check_seqs(PyObject *self, PyObject *args) {
    Py_buffer src;
    Py_ssize_t offset, n, n_tokens, n_blocks, n_sampling;
    if (!PyArg_ParseTuple(args, "y*nnnnn", &src, &offset, &n, &n_tokens, &n_blocks,
                          &n_sampling))
        return NULL;
    if (offset < 0 || n < 0 || offset + n * 21 > src.len) {
        PyBuffer_Release(&src);
        PyErr_SetString(PyExc_ValueError, "check_seqs: the arrays run past the buffer");
        return NULL;
    }
    const char *base = (const char *)src.buf + offset;
    int32_t v;
    long long tokens = 0, blocks = 0;
    long code = 0;
    for (Py_ssize_t k = 0; k < 5 * n && !code; k++) {
        memcpy(&v, base + 4 * k, 4); /* the frame gives no alignment guarantee */
        if (v < 0)
            code = 3;
        else if (k < n)
            tokens += v;
        else if (k >= 3 * n && k < 4 * n && v >= n_sampling)
            code = 4;
        else if (k >= 4 * n)
            blocks += v;
    }
    if (!code && tokens != n_tokens)
        code = 1;
    if (!code && blocks != n_blocks)
        code = 2;
    const unsigned char *flags = (const unsigned char *)base + 20 * n;
    for (Py_ssize_t k = 0; k < n && !code; k++)
        if (flags[k] > 1)
            code = 5;
    PyBuffer_Release(&src);
    return PyLong_FromLong(code);
}

static PyMethodDef methods[] = {
    {"write_arrays", write_arrays, METH_VARARGS, "Copy a step's nine arrays into a frame."},
    {"check_seqs", check_seqs, METH_VARARGS, "Check a frame's per-sequence arrays."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_frame", NULL, -1, methods};

PyMODINIT_FUNC PyInit__frame(void) { return PyModule_Create(&module); }

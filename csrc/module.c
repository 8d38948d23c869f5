/* udpnest._native: the per-packet work of udpnest's dataplane in C (see csrc/udpnest.h). */
#include "udpnest.h"

static PyObject *native_ones_sum(PyObject *self, PyObject *args)
{
    Py_buffer b;
    unsigned long long start = 0;
    if (!PyArg_ParseTuple(args, "y*|K", &b, &start))
        return NULL;
    uint64_t s = un_sum((const uint8_t *)b.buf, (size_t)b.len, start);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(un_fold(s));
}

static PyMethodDef native_methods[] = {
    {"ones_sum", native_ones_sum, METH_VARARGS,
     "ones_sum(buf, start=0) -> int: folded one's complement sum of big-endian 16-bit words"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "udpnest._native",
    "udpnest's compiled dataplane core (the pure-Python engine is the reference and fallback).", -1,
    native_methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL)
        return NULL;
    if (udpnest_tx_init(m) < 0 || udpnest_rx_init(m) < 0 || udpnest_rxbatch_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (udpnest_txburst_init(m) < 0) { /* after tx: the burst calls the TX functions registered there */
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

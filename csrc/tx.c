/* TX half of the native core (owner: the TX work; see docs/architecture.md). */
#include "udpnest.h"

static PyMethodDef tx_methods[] = {
    {NULL, NULL, 0, NULL},
};

int udpnest_tx_init(PyObject *module) { return PyModule_AddFunctions(module, tx_methods); }

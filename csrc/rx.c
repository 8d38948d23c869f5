/* RX half of the native core (owner: the RX work; see docs/architecture.md). */
#include "udpnest.h"

static PyMethodDef rx_methods[] = {
    {NULL, NULL, 0, NULL},
};

int udpnest_rx_init(PyObject *module) { return PyModule_AddFunctions(module, rx_methods); }

"""Old name of :mod:`udpnest.rxpipe` (the whole receive pipeline), kept importable: ``udpnest.gro`` is
the same module object, so attributes set on one are seen on the other."""

import sys

from . import rxpipe

sys.modules[__name__] = rxpipe

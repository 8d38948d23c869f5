"""udpnest: a userspace Geneve endpoint that folds nested UDP tunnel headers into a Geneve option.

Stable API::

    from udpnest import fold, unfold, ParseError, Reason
"""

from .fold import DEFAULT_PORTS, Encap, Folded, Unfolded, fold, gro_hint_for, unfold
from .wire.errors import ParseError, Reason

__version__ = "0.1.0"
__all__ = ["fold", "unfold", "gro_hint_for", "Folded", "Unfolded", "Encap", "DEFAULT_PORTS", "ParseError",
           "Reason"]

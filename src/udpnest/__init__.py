"""udpnest: a userspace Geneve endpoint that folds nested UDP tunnel headers into a Geneve option."""

__version__ = "0.1.0"

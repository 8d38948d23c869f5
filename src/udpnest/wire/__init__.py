"""Pure packet formats: parse_* / build_* per protocol, checksums, virtio_net_hdr.  No I/O here."""

from .errors import ParseError, Reason

__all__ = ["ParseError", "Reason"]

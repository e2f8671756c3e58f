"""Framing and message types shared by every link (SPEC §6)."""

from hsb.wire.framing import (
    DEFAULT_MAX_FRAME,
    Decoder,
    ProtocolError,
    encode,
)

__all__ = ["DEFAULT_MAX_FRAME", "Decoder", "ProtocolError", "encode"]

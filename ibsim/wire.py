"""Framing of the TWS API socket protocol: length-prefixed frames of NUL-terminated fields.

Mirrors the byte handling of ib_async/client.py (`_prefix`, `_onSocketHasData`), seen from
the server side: the client opens with the magic b"API\\0" and a framed version range, then
every message both ways is a 4-byte big-endian length followed by UTF-8 fields, each ending
in NUL.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

MAGIC = b"API\0"
# IB's own limit on an incoming frame; anything bigger is garbage or an attack.
MAX_FRAME_BYTES = 16 * 1024 * 1024
UNSET_DOUBLE = 1.7976931348623157e308
UNSET_INTEGER = 2**31 - 1
_UNSET_DOUBLE_TEXT = "1.7976931348623157E308"

_pack_len = struct.Struct(">I").pack
_unpack_len = struct.Struct(">I").unpack_from


class ProtocolError(Exception):
    """The peer sent bytes that are not the TWS API protocol."""


def fmt(value: object) -> str:
    """One field as IB writes it: bools 1/0, None empty, unset doubles as IB's max double."""
    if value is None:
        return ""
    if value is True:
        return "1"
    if value is False:
        return "0"
    if isinstance(value, float):
        if value == UNSET_DOUBLE:
            return _UNSET_DOUBLE_TEXT
        if math.isinf(value):
            return "Infinite"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    return str(value)


def fields_bytes(fields: Iterable[object]) -> bytes:
    """Fields (not yet framed) as NUL-terminated UTF-8."""
    return "".join(fmt(f) + "\0" for f in fields).encode()


def frame(payload: bytes) -> bytes:
    return _pack_len(len(payload)) + payload


def encode(*fields: object) -> bytes:
    """A complete framed message."""
    return frame(fields_bytes(fields))


class FrameReader:
    """Buffers socket bytes and yields complete messages as lists of str fields.

    The first thing a client sends is MAGIC plus a framed "v<min>..<max>" string; call
    `read_handshake` until it returns the version text, then `read_messages`.
    """

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max_frame = max_frame
        self.handshake_done = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    def read_handshake(self) -> str | None:
        """The client's version range text ("v157..178"), or None until it is complete.

        Raises ProtocolError on a wrong magic or an oversized frame.
        """
        if len(self._buf) < len(MAGIC):
            if not MAGIC.startswith(bytes(self._buf)):
                raise ProtocolError(f"bad magic {bytes(self._buf)!r}")
            return None
        if self._buf[: len(MAGIC)] != MAGIC:
            raise ProtocolError(f"bad magic {bytes(self._buf[:4])!r}")
        payload = self._take_frame(len(MAGIC))
        if payload is None:
            return None
        self.handshake_done = True
        try:
            return payload.decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError("handshake is not UTF-8") from exc

    def read_messages(self) -> list[list[str]]:
        """All complete messages buffered so far. Raises ProtocolError on a bad frame."""
        messages: list[list[str]] = []
        while True:
            payload = self._take_frame(0)
            if payload is None:
                return messages
            if not payload.endswith(b"\0"):
                raise ProtocolError("frame does not end with a NUL field terminator")
            try:
                text = payload.decode()
            except UnicodeDecodeError as exc:
                raise ProtocolError("frame is not UTF-8") from exc
            fields = text.split("\0")
            fields.pop()  # the empty string after the last terminator
            messages.append(fields)

    def _take_frame(self, offset: int) -> bytes | None:
        if len(self._buf) < offset + 4:
            return None
        (length,) = _unpack_len(self._buf, offset)
        if length == 0 or length > self._max_frame:
            raise ProtocolError(f"frame length {length} out of range")
        end = offset + 4 + length
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[offset + 4 : end])
        del self._buf[:end]
        return payload

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

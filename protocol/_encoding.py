"""Byte-level encodings shared by every signed structure.

* canonical JSON: UTF-8, sorted keys, no insignificant whitespace. Used to
  *produce* bytes; verification always works on the bytes as received.
* unpadded base64url for binary fields inside JSON.
* DSSE (Dead Simple Signing Envelope) for signed statements: bundles,
  authorisations, revocations, person-signed documents and receipts. The
  signature covers ``PAE(payloadType, payload)``, never a re-serialised object.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from ._errors import EncodingError


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` deterministically (sorted keys, compact, UTF-8)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def parse_json(data: bytes, *, what: str) -> Any:
    """Parse JSON bytes, refusing duplicate keys, NaN and invalid UTF-8."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, val in pairs:
            if key in result:
                raise EncodingError(f"{what}: duplicate key {key!r}")
            result[key] = val
        return result

    def no_constants(name: str) -> Any:
        raise EncodingError(f"{what}: {name} is not allowed")

    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except EncodingError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EncodingError(f"{what}: not valid JSON ({exc.__class__.__name__})") from None


def b64e(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: Any, *, what: str) -> bytes:
    """Decode unpadded base64url strictly (no padding, no stray characters)."""
    if not isinstance(text, str) or "=" in text:
        raise EncodingError(f"{what}: expected unpadded base64url text")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise EncodingError(f"{what}: not base64url") from None
    if b64e(raw) != text:
        raise EncodingError(f"{what}: non-canonical base64url")
    return raw


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class Signed:
    """A DSSE envelope: the exact payload bytes, their type and one signature."""

    payload_type: str
    payload: bytes
    key_id: str
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "payloadType": self.payload_type,
            "payload": b64e(self.payload),
            "signatures": [{"keyid": self.key_id, "sig": b64e(self.signature)}],
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, obj: Any, *, what: str) -> "Signed":
        if not isinstance(obj, dict) or set(obj) != {"payloadType", "payload", "signatures"}:
            raise EncodingError(f"{what}: not a DSSE envelope")
        sigs = obj["signatures"]
        if not isinstance(obj["payloadType"], str) or not isinstance(sigs, list) or len(sigs) != 1:
            raise EncodingError(f"{what}: a DSSE envelope with exactly one signature is expected")
        sig = sigs[0]
        if not isinstance(sig, dict) or set(sig) != {"keyid", "sig"} or not isinstance(sig["keyid"], str):
            raise EncodingError(f"{what}: malformed DSSE signature")
        return cls(
            payload_type=obj["payloadType"],
            payload=b64d(obj["payload"], what=f"{what} payload"),
            key_id=sig["keyid"],
            signature=b64d(sig["sig"], what=f"{what} signature"),
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, what: str) -> "Signed":
        return cls.from_json(parse_json(data, what=what), what=what)

    def signed_bytes(self) -> bytes:
        """What the signature covers."""
        return pae(self.payload_type, self.payload)

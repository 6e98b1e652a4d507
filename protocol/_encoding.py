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

import orjson

from ._errors import EncodingError

#: Nesting deeper than this is left to the standard library (``_plain``); orjson's own limit is 254.
_FAST_DEPTH = 64


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is made only of dicts, lists, tuples, ``str``, ``int``, ``bool`` and ``None``, each
    of exactly that type: values that orjson writes as Python's ``json`` does, or refuses (a key not a
    ``str``, an integer beyond 64 bits, a lone surrogate: the standard library is then asked). Floats
    are not (the two write some exponents differently, ``1e-07`` and ``1e-7``, and orjson writes NaN as
    ``null``), nor subclasses (enums), nor what orjson writes and ``json`` refuses (dataclasses,
    datetimes, UUIDs).

    One difference remains on the fast paths (``canonical_json``, ``compact_json``, ``read_json``,
    ``parse_json``): the standard library recurses on the caller's stack, so nesting can make it raise
    ``RecursionError`` when the caller's own stack is already deep; orjson has limits of its own (254
    levels written, 1024 read) and then gives the result."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is dict:
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return False
    if depth >= _FAST_DEPTH:
        return False
    for item in items:  # noqa: SIM110 - all() over a generator: 1.5-2 times as long on a document
        if type(item) is not str and not _plain(item, depth + 1):  # (strings: most values, checked here)
            return False
    return True


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` deterministically (sorted keys, compact, UTF-8).

    The bytes are those of ``json.dumps(value, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False, allow_nan=False)`` encoded as UTF-8, and so are the errors.
    orjson writes them, about five times faster, when the value is ``_plain``;
    anything else (floats, huge integers, lone surrogates, other types) takes
    the standard library's path.
    """
    return _compact(value, sort_keys=True)


def compact_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON in its own key order: ``canonical_json`` without the sorting (an
    answer's body, say), the same bytes as the standard library's, as fast."""
    return _compact(value, sort_keys=False)


def _compact(value: Any, *, sort_keys: bool) -> bytes:
    if _plain(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
        except orjson.JSONEncodeError:  # (``_plain``): the standard library writes it or raises its own error
            pass
    return json.dumps(
        value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def read_json(data: bytes) -> Any:
    """JSON from outside that is not signed (a request's body, a peer's answer): ``json.loads(data)``,
    with its results (NaN, integers of any size, UTF-16, a byte order mark), read by orjson when that
    gives the same value; ``parse_json`` for the strict reading of signed structures. Whatever it cannot
    read raises ``ValueError``, nesting deeper than the parser goes included (``json.loads`` raises
    ``RecursionError`` there), so a caller has one error to catch. ``bytes`` only on the fast path
    (orjson also reads a ``memoryview``, which ``json.loads`` refuses)."""
    if type(data) is bytes:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:  # orjson refuses more (NaN, other encodings): json.loads decides
            pass
        else:
            if _plain(value):  # (else a float, as orjson reads a huge integer, or too deep to look at)
                return value
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested deeper than the parser goes") from None


def parse_json(data: bytes, *, what: str) -> Any:
    """Parse JSON bytes, refusing duplicate keys, NaN and invalid UTF-8.

    Signed structures arrive as canonical JSON (``canonical_json``), so the
    fast path reads them with orjson, two to three times faster, and keeps the
    result only if orjson writes it back as exactly ``data``. Then no key was
    repeated (it would be missing from what is written back), no integer was
    too large for orjson (it would come back as a float), and each float is
    written as its shortest round-trip form, which Python reads as the same
    float: the value is the one the standard library reads. Any other input
    is read by the standard library, strictly, as before.
    """
    if type(data) is bytes:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # refused below, with the standard library's reason
        else:
            try:
                if orjson.dumps(value, option=orjson.OPT_SORT_KEYS) == data:
                    return value
            except orjson.JSONEncodeError:  # nested deeper than orjson writes (254): read as below
                pass
    return _parse_json_stdlib(data, what=what)


def _parse_json_stdlib(data: bytes, *, what: str) -> Any:
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
    def from_json(cls, obj: Any, *, what: str) -> Signed:
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
    def from_bytes(cls, data: bytes, *, what: str) -> Signed:
        return cls.from_json(parse_json(data, what=what), what=what)

    def signed_bytes(self) -> bytes:
        """What the signature covers."""
        return pae(self.payload_type, self.payload)

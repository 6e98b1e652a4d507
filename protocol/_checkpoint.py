"""Signed tree heads in the formats transparency-log tools read: C2SP signed notes, checkpoints, cosignatures.

* ``signed-note`` (https://c2sp.org/signed-note, v1.0.0): a UTF-8 text ending
  in a newline, a blank line, then signature lines
  ``— <key name> base64(key ID (4 bytes, big-endian) || signature)``. For
  Ed25519 (signature type 0x01) the signature is over the note text including
  its final newline, and the key ID is
  ``SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]``. Verifiers
  ignore signatures from keys they do not know and reject a note whose known
  key's signature fails.
* ``tlog-checkpoint`` (https://c2sp.org/tlog-checkpoint, v1.0.0): the note
  text is the origin line, the tree size in decimal without leading zeroes,
  the standard-base64 RFC 6962/9162 root hash, then optional non-empty
  extension lines. The log's key name matches the origin.
* ``tlog-cosignature`` (https://c2sp.org/tlog-cosignature, cosignature/v1,
  Ed25519, type 0x04): a witness signs
  ``"cosignature/v1\\n" "time <POSIX seconds>\\n"`` followed by the whole
  checkpoint text; its signature line carries
  ``key ID || u64 big-endian timestamp || 64-byte Ed25519 signature`` with the
  key ID computed over type byte 0x04. Because that message does not name the
  cosigner, one key must never cosign under two names.

prolink's logs are named ``prolink.<party>/audit`` (origin and log key name)
and its witnesses ``prolink.<party>/witness``; both use the node's Ed25519
signing key, which is safe because the three kinds of message it signs are
domain-separated by their first bytes (``DSSEv1 `` for DSSE statements and
envelopes, the log's own origin line for checkpoints, ``cosignature/v1`` for
cosignatures).

Pure: bytes, keys and timestamps in; parsed, verified objects out, or ``LogError``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ._errors import LogError
from ._primitives import SigningKey, VerifyKey

SIG_ED25519 = 0x01
SIG_COSIGNATURE_V1 = 0x04
MAX_SIGNATURES = 100
MAX_NOTE_SIZE = 1 << 20
EM_DASH = "\u2014"
#: prolink's one checkpoint extension line: when the log signed the head, in POSIX seconds.
TIME_PREFIX = "time "

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_UNICODE_SPACE = re.compile(r"\s")
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,19})$")


def log_origin(party: str) -> str:
    """The origin line (and log key name) of a Party's audit log, e.g. ``prolink.kz/audit``."""
    return f"prolink.{party.lower()}/audit"


def witness_name(party: str) -> str:
    """The key name under which a Party's node cosigns other Parties' checkpoints."""
    return f"prolink.{party.lower()}/witness"


def _b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64d(text: str, *, what: str, code: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise LogError(f"{what}: not standard base64", code=code) from None
    if _b64e(raw) != text:
        raise LogError(f"{what}: non-canonical base64", code=code)
    return raw


def note_key_id(name: str, sig_type: int, public: bytes) -> bytes:
    """``SHA-256(key name || 0x0A || signature type || public key)[:4]`` (signed-note, "Signatures")."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public).digest()[:4]


def verifier_key(name: str, key: VerifyKey, sig_type: int = SIG_ED25519) -> str:
    """The ``vkey`` witness tools are configured with: ``<name>+<hex key ID>+<base64(type || key)>``."""
    _check_name(name)
    return f"{name}+{note_key_id(name, sig_type, key.public).hex()}+{_b64e(bytes([sig_type]) + key.public)}"


def _check_name(name: str) -> None:
    if not name or "+" in name or _UNICODE_SPACE.search(name) or _CONTROL.search(name):
        raise LogError(
            f"key name {name!r} must be non-empty, without spaces or '+'", code="audit.malformed_note"
        )


# --- signed notes ---------------------------------------------------------------


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note: key name, 4-byte key ID, and the signature bytes after the ID."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{EM_DASH} {self.name} {_b64e(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    """A parsed (not yet verified) signed note."""

    text: bytes
    signatures: tuple[NoteSignature, ...]

    def to_bytes(self) -> bytes:
        return self.text + b"\n" + "".join(s.line() for s in self.signatures).encode("utf-8")

    def with_signatures(self, extra: Iterable[NoteSignature]) -> Note:
        """The note with more signature lines (exact duplicates are dropped)."""
        sigs = list(self.signatures)
        for s in extra:
            if s not in sigs:
                sigs.append(s)
        return Note(self.text, tuple(sigs))


def _check_text(text: str, what: str) -> None:
    if _CONTROL.search(text):
        raise LogError(f"{what}: control characters other than newline", code="audit.malformed_note")


def parse_note(data: bytes) -> Note:
    """Split a signed note into text and signature lines (signed-note, "Format"). Verifies nothing."""
    code = "audit.malformed_note"
    if len(data) > MAX_NOTE_SIZE:
        raise LogError("note is too large", code=code)
    try:
        whole = data.decode("utf-8")
    except UnicodeDecodeError:
        raise LogError("note is not valid UTF-8", code=code) from None
    _check_text(whole, "note")
    split = whole.rfind("\n\n")
    if split < 0 or not whole.endswith("\n"):
        raise LogError("note has no blank line before its signatures", code=code)
    text, block = whole[: split + 1], whole[split + 2 :]
    lines = block[:-1].split("\n") if block else []
    if not lines or lines == [""]:
        raise LogError("note has no signature lines", code=code)
    if len(lines) > MAX_SIGNATURES:
        raise LogError(f"note has more than {MAX_SIGNATURES} signatures", code=code)
    sigs: list[NoteSignature] = []
    for line in lines:
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != EM_DASH:
            raise LogError(f"malformed signature line {line[:80]!r}", code=code)
        _check_name(parts[1])
        raw = _b64d(parts[2], what="signature", code=code)
        if len(raw) < 5:
            raise LogError("signature is too short", code=code)
        sigs.append(NoteSignature(parts[1], raw[:4], raw[4:]))
    return Note(text.encode("utf-8"), tuple(sigs))


def sign_note(text: bytes, name: str, key: SigningKey) -> NoteSignature:
    """An Ed25519 note signature (type 0x01) over ``text``."""
    _check_name(name)
    _check_note_text(text)
    return NoteSignature(name, note_key_id(name, SIG_ED25519, key.public.public), key.sign(text))


def _check_note_text(text: bytes) -> None:
    if not text.endswith(b"\n"):
        raise LogError("note text must end with a newline", code="audit.malformed_note")
    try:
        _check_text(text.decode("utf-8"), "note text")
    except UnicodeDecodeError:
        raise LogError("note text is not valid UTF-8", code="audit.malformed_note") from None


def verify_note(note: Note, name: str, keys: Sequence[VerifyKey]) -> VerifyKey:
    """The key among ``keys`` whose Ed25519 signature under ``name`` on ``note`` verifies.

    Signatures by other names or key IDs are ignored (they may be cosignatures);
    a signature from a known key that fails makes the whole note invalid.
    """
    by_id = {note_key_id(name, SIG_ED25519, k.public): k for k in keys}
    found: VerifyKey | None = None
    for sig in note.signatures:
        if sig.name != name or sig.key_id not in by_id:
            continue
        key = by_id[sig.key_id]
        if not key.verify(sig.signature, note.text):
            raise LogError(
                f"the signature of {name} (key {key.key_id}) on this note does not verify",
                code="audit.bad_signature",
            )
        found = key
    if found is None:
        raise LogError(f"the note carries no signature by {name} with a known key", code="audit.unknown_key")
    return found


# --- checkpoints ----------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """The body of a tlog-checkpoint: origin, tree size, root hash, extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> bytes:
        _check_name_like_origin(self.origin)
        if self.size < 0 or self.size >= 1 << 63 or len(self.root) != 32:
            raise LogError("checkpoint size or root out of range", code="audit.malformed_checkpoint")
        for ext in self.extensions:
            if not ext or "\n" in ext:
                raise LogError(
                    "checkpoint extension lines must be non-empty single lines",
                    code="audit.malformed_checkpoint",
                )
        lines = [self.origin, str(self.size), _b64e(self.root), *self.extensions]
        text = "\n".join(lines) + "\n"
        _check_text(text, "checkpoint")
        return text.encode("utf-8")

    @property
    def time(self) -> int | None:
        """The ``time <POSIX seconds>`` extension line, if present."""
        for ext in self.extensions:
            if ext.startswith(TIME_PREFIX) and _DECIMAL.match(ext[len(TIME_PREFIX) :]):
                return int(ext[len(TIME_PREFIX) :])
        return None

    @classmethod
    def parse(cls, text: bytes) -> Checkpoint:
        code = "audit.malformed_checkpoint"
        try:
            body = text.decode("utf-8")
        except UnicodeDecodeError:
            raise LogError("checkpoint is not valid UTF-8", code=code) from None
        if not body.endswith("\n"):
            raise LogError("checkpoint text must end with a newline", code=code)
        lines = body[:-1].split("\n")
        if len(lines) < 3 or any(not line for line in lines):
            raise LogError("a checkpoint is at least three non-empty lines", code=code)
        if not _DECIMAL.match(lines[1]) or int(lines[1]) >= 1 << 63:
            raise LogError(
                f"checkpoint tree size {lines[1][:30]!r} is not a decimal without leading zeroes", code=code
            )
        root = _b64d(lines[2], what="checkpoint root hash", code=code)
        if len(root) != 32:
            raise LogError("checkpoint root hash is not 32 bytes", code=code)
        return cls(lines[0], int(lines[1]), root, tuple(lines[3:]))


def _check_name_like_origin(origin: str) -> None:
    if not origin or "\n" in origin:
        raise LogError("checkpoint origin must be a non-empty single line", code="audit.malformed_checkpoint")


def sign_checkpoint(checkpoint: Checkpoint, key: SigningKey, name: str | None = None) -> bytes:
    """A checkpoint as a signed note, signed by the log under ``name`` (default: the origin)."""
    text = checkpoint.body()
    return Note(text, (sign_note(text, name or checkpoint.origin, key),)).to_bytes()


@dataclass(frozen=True)
class OpenedCheckpoint:
    """A checkpoint whose log signature verified."""

    checkpoint: Checkpoint
    note: Note
    key: VerifyKey


def open_checkpoint(
    data: bytes, origin: str, keys: Sequence[VerifyKey], name: str | None = None
) -> OpenedCheckpoint:
    """Parse a checkpoint note; check its origin and the log's signature under ``name`` (default: origin)."""
    note = parse_note(data)
    checkpoint = Checkpoint.parse(note.text)
    if checkpoint.origin != origin:
        raise LogError(
            f"checkpoint is for log {checkpoint.origin!r}, expected {origin!r}", code="audit.wrong_origin"
        )
    key = verify_note(note, name or origin, keys)
    return OpenedCheckpoint(checkpoint, note, key)


# --- cosignatures (cosignature/v1) -----------------------------------------------------


def cosignature_message(text: bytes, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: header line, time line, then the whole checkpoint text."""
    if not 0 <= timestamp < 1 << 63:
        raise LogError("cosignature timestamp out of range", code="audit.malformed_note")
    return b"cosignature/v1\ntime %d\n" % timestamp + text


def cosign(text: bytes, name: str, key: SigningKey, timestamp: int) -> NoteSignature:
    """A witness's timestamped Ed25519 cosignature (type 0x04) on checkpoint text ``text``."""
    _check_name(name)
    _check_note_text(text)
    sig = key.sign(cosignature_message(text, timestamp))
    return NoteSignature(
        name, note_key_id(name, SIG_COSIGNATURE_V1, key.public.public), struct.pack(">Q", timestamp) + sig
    )


def verify_cosignature(
    text: bytes, signature: NoteSignature, name: str, keys: Sequence[VerifyKey]
) -> tuple[VerifyKey, int]:
    """(key, timestamp) of a valid cosignature/v1 by ``name`` with one of ``keys`` on checkpoint ``text``."""
    if signature.name != name:
        raise LogError(f"cosignature is by {signature.name!r}, expected {name!r}", code="audit.unknown_key")
    by_id = {note_key_id(name, SIG_COSIGNATURE_V1, k.public): k for k in keys}
    key = by_id.get(signature.key_id)
    if key is None:
        raise LogError(f"cosignature by {name} is from no known key", code="audit.unknown_key")
    if len(signature.signature) != 8 + 64:
        raise LogError(
            "a cosignature/v1 is 8 bytes of timestamp and 64 of signature", code="audit.bad_signature"
        )
    (timestamp,) = struct.unpack(">Q", signature.signature[:8])
    if timestamp >= 1 << 63 or not key.verify(signature.signature[8:], cosignature_message(text, timestamp)):
        raise LogError(f"the cosignature of {name} does not verify", code="audit.bad_signature")
    return key, timestamp


def find_cosignatures(note: Note, name: str, keys: Sequence[VerifyKey]) -> list[tuple[VerifyKey, int]]:
    """Every valid cosignature by ``name`` on ``note``; other names and unknown key IDs are ignored."""
    ids = {note_key_id(name, SIG_COSIGNATURE_V1, k.public) for k in keys}
    return [
        verify_cosignature(note.text, s, name, keys)
        for s in note.signatures
        if s.name == name and s.key_id in ids
    ]


def parse_signature_line(line: str) -> NoteSignature:
    """One signature line (as returned by a witness) on its own."""
    text = line if line.endswith("\n") else line + "\n"
    return parse_note(b"x\n\n" + text.encode("utf-8")).signatures[0]

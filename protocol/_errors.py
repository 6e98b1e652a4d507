"""The exception tree of prolink.

Every rejection carries a stable machine ``code`` (what the API returns and
tests assert) and a human ``message``. Callers catch at the level they care
about: ``ProlinkError`` for anything, or one of the groups below.

This module must never import anything but the standard library.
"""

from __future__ import annotations


class ProlinkError(Exception):
    """Base of every error prolink raises on purpose."""

    code: str = "prolink.error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class EncodingError(ProlinkError):
    """Bytes that are not a well-formed prolink structure (framing, JSON, base64)."""

    code = "encoding.malformed"


class EnvelopeError(ProlinkError):
    """An envelope that cannot be accepted: bad signature, wrong recipient, stale, undecryptable."""

    code = "envelope.invalid"


class ReceiptError(ProlinkError):
    """A receipt that does not verify or does not match the envelope it answers."""

    code = "receipt.invalid"


class TrustError(ProlinkError):
    """Unknown, expired or revoked keys, bundles that do not verify, missing authorisations."""

    code = "trust.invalid"


class DocumentError(ProlinkError):
    """A document (request, reply, consent...) that breaks the agreement's rules for its kind.

    ``field`` names the offending field where there is one (e.g. Art. 8 language checks).
    """

    code = "document.invalid"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message, code=code)
        self.field = field


class LifecycleError(ProlinkError):
    """A message that may not follow the request's current state (Art. 4-6, 14)."""

    code = "lifecycle.transition_not_allowed"


class PolicyError(ProlinkError):
    """Access refused by purpose, clearance, consent or handling conditions (Art. 7)."""

    code = "policy.denied"


class LogError(ProlinkError):
    """A Merkle proof, checkpoint, cosignature or audit export that does not verify.

    Codes: ``audit.malformed_note``, ``audit.malformed_checkpoint``,
    ``audit.bad_signature``, ``audit.unknown_key``, ``audit.bad_inclusion_proof``,
    ``audit.inconsistent`` (a consistency proof fails: one of the two trees is not
    a prefix of the other), ``audit.bad_export``, ``audit.entry_mismatch``.
    """

    code = "audit.invalid"

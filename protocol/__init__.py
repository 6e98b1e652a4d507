"""prolink's protocol: envelopes, receipts, trust, documents and the request lifecycle.

Pure: bytes, keys and ``now`` in; verified objects out, or a ``ProlinkError``
with a stable code. Nothing here touches the network, the disk, a database or
the clock. See ``protocol/README.md`` for the wire format.
"""

from ._auditlog import (
    ENTRY_VERSION,
    EXPORT_FORMAT,
    RECORD_PREFIX,
    ExportFailure,
    ExportReport,
    ExportVerifier,
    HeadInfo,
    PROOF_FORMAT,
    ProvenEntry,
    check_detail,
    diagnose,
    entry_bytes,
    entry_proof,
    open_head,
    verify_entry_proof,
    hashes_b64,
    parse_entry,
    record_line,
    verify_export_bytes,
)
from ._batch import BATCH_MAGIC, BatchError, decode_batch, encode_batch
from ._checkpoint import (
    TIME_PREFIX,
    Checkpoint,
    Note,
    NoteSignature,
    OpenedCheckpoint,
    cosign,
    find_cosignatures,
    log_origin,
    note_key_id,
    open_checkpoint,
    parse_note,
    parse_signature_line,
    sign_checkpoint,
    sign_note,
    verifier_key,
    verify_cosignature,
    verify_note,
    witness_name,
)
from ._documents import (
    CONFIDENTIALITY_LEVELS,
    DIRECTIONS,
    DOCUMENT_KINDS,
    DOCUMENT_TYPES,
    FORMS,
    REFUSAL_GROUNDS,
    AttachmentRef,
    BaseDocument,
    Document,
    Vocabulary,
    document_to_json,
    is_russian,
    parse_document,
)
from ._encoding import Signed, b64d, b64e, canonical_json, pae, parse_json
from ._envelope import (
    MAGIC,
    PROTOCOL_VERSION,
    Framing,
    Header,
    NodeKeys,
    VerifiedMessage,
    open,
    read_framing,
    seal,
    seal_stream,
    sign_document,
)
from ._errors import (
    DocumentError,
    EncodingError,
    EnvelopeError,
    LifecycleError,
    LogError,
    PolicyError,
    ProlinkError,
    ReceiptError,
    TrustError,
)
from ._lifecycle import (
    AGREEMENT_STATES,
    IN_FORCE,
    OPEN_REQUEST_STATES,
    REQUESTED,
    REQUESTING,
    STATES,
    TERMINAL_STATES,
    TERMINATED,
    TERMINATION_PENDING,
    TRANSITIONS,
    agreement_state_on,
    next_state,
    render_mermaid,
)
from ._merkle import (
    EMPTY_ROOT,
    CompactRange,
    MemoryTree,
    NodeGetter,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    needed_nodes,
    node_hash,
    root_of,
    subtree_hash,
    verify_consistency,
    verify_inclusion,
)
from ._primitives import (
    CLASSIC,
    DEFAULT_SUITE,
    PQ_HYBRID,
    SUITES,
    DecryptionKey,
    EncryptionKey,
    SigningKey,
    VerifyKey,
    key_id_for,
)
from ._receipt import ACCEPTED, REJECTED, Receipt, make_receipt, receipt, verify_receipt
from ._stream import CHUNK_SIZE, decrypt_stream, encrypt_stream
from ._trust import (
    Authorisation,
    BundleContents,
    KeyValidity,
    Revocation,
    TrustedParty,
    fingerprint,
    issue_authorisation,
    issue_revocation,
    normalise_fingerprint,
    sign_bundle,
    verify_authorisation,
    verify_bundle,
    verify_revocation,
)

__all__ = [name for name in dir() if not name.startswith("_")]

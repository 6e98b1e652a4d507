"""Benchmark of prolink's protocol layer against the raw primitives it is built on, measured in the same run.

Part 1, a 1 KiB document, for each HPKE suite:
  * seal+sign (the person's signature, then ``seal``) per second, against the raw
    cost of the primitives that path performs: two Ed25519 signatures (person,
    node), one HPKE encryption of the same inner body with the same suite, and
    SHA-256 of the payload section;
  * verify+open per second, against three Ed25519 verifications (node, person,
    authorisation), one HPKE decryption and the SHA-256 passes ``open`` makes.
  Target: ratio (ours / raw) >= 0.5.

Part 2, a 256 MiB attachment (generated in 64 KiB pieces from a 1 MiB pool, never
held whole in memory):
  * ``encrypt_stream`` / ``decrypt_stream`` throughput as a ratio of raw
    AES-256-GCM (``cryptography`` AESGCM on the same 64 KiB chunks, and on one
    256 MiB buffer); target >= 0.5 against the faster of the two;
  * ``seal_stream`` and ``open`` (which add the node signature, the SHA-256
    passes that bind attachments to the signed document and to the receipt)
    against raw AES-GCM alone (for information) and against the same primitives
    (AES-GCM plus the same number of SHA-256 passes); target >= 0.5 for the latter;
  * peak memory of the streaming paths, measured in a fresh child process
    (``ru_maxrss`` growth, and tracemalloc's peak); target < 64 MiB.

Timings use ``time.perf_counter`` and keep the best of several repetitions.
Runs in about a minute on two cores: ``python bench/bench_protocol.py``.
"""

from __future__ import annotations

import argparse
import builtins
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, BinaryIO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import cryptography  # noqa: E402
import nacl.bindings  # noqa: E402
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305  # noqa: E402

from protocol import (  # noqa: E402
    CHUNK_SIZE,
    CLASSIC,
    PQ_HYBRID,
    Authorisation,
    BundleContents,
    DecryptionKey,
    KeyValidity,
    NodeKeys,
    Signed,
    SigningKey,
    TrustedParty,
    canonical_json,
    decrypt_stream,
    document_to_json,
    encrypt_stream,
    fingerprint,
    issue_authorisation,
    open,
    parse_document,
    read_framing,
    seal,
    seal_stream,
    sign_bundle,
    sign_document,
    verify_bundle,
)
from protocol._stream import TAG_SIZE, ciphertext_size  # noqa: E402

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
MIB = 1 << 20
BIG = 256 * MIB
DOC_TARGET_BYTES = 1024
RATIO_TARGET = 0.5
MEMORY_TARGET = 64 * MIB
SEALED_CHUNK = CHUNK_SIZE + TAG_SIZE


# --- timing ------------------------------------------------------------------------


def calibrate(fn: Callable[[], Any], min_time: float) -> int:
    """How many calls of ``fn`` take about ``min_time`` seconds."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time / 4 or number >= 1 << 20:
            return max(1, int(number * min_time / max(elapsed, 1e-9)))
        number *= 2


def best_interleaved(
    fns: dict[str, Callable[[], Any]], *, rounds: int = 9, min_time: float = 0.05
) -> dict[str, float]:
    """Seconds per call of each function, best of ``rounds``.

    The functions are timed in turn within each round, so that load from other
    processes on the machine hits ours and the raw primitives alike.
    """
    numbers = {name: calibrate(fn, min_time) for name, fn in fns.items()}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(numbers[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / numbers[name])
    return best


# --- two Parties, in memory ------------------------------------------------------------


@dataclass(frozen=True)
class Party:
    code: str
    root: SigningKey
    node: SigningKey
    decryption: DecryptionKey
    signatory: SigningKey
    trusted: TrustedParty
    authorisation: bytes

    @property
    def keys(self) -> NodeKeys:
        return NodeKeys(self.code, self.node, (self.decryption,))


def make_party(code: str, suite: str) -> Party:
    root, node, signatory = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    decryption = DecryptionKey.generate(suite)
    since = NOW - timedelta(days=30)
    contents = BundleContents(
        code,
        code,
        f"https://{code.lower()}.example",
        1,
        since,
        root.public,
        ((node.public, KeyValidity(node.key_id, since, None)),),
        ((decryption.public, KeyValidity(decryption.key_id, since, None)),),
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    )
    trusted = verify_bundle(sign_bundle(contents, root), expected_fingerprint=fingerprint(root.public))
    auth = issue_authorisation(
        Authorisation(
            code,
            "Иванов Иван Иванович",
            "прокурор",
            signatory.public,
            date(2026, 1, 1),
            date(2026, 12, 31),
            since,
        ),
        root,
    )
    return Party(code, root, node, decryption, signatory, trusted, auth)


SENTENCE = (
    "Просим предоставить сведения о регистрации ООО «Восток-Транзит» и о движении денежных "
    "средств по его счетам за 2025-2026 годы, а также копии учредительных документов."
)
WORDS = SENTENCE.split(" ")


def document_of_size(target: int, attachments: list[dict[str, Any]] | None = None) -> Any:
    """A valid Russian request whose canonical JSON is ``target`` bytes (or just over)."""
    request_id = "6f1d5c3a-2b7e-4c90-8a41-93e2d0f5b718"

    def build(filler: int) -> dict[str, Any]:
        return {
            "kind": "request",
            "id": request_id,
            "thread_id": request_id,
            "sender_party": "KZ",
            "recipient_party": "BY",
            "created_at": "2026-11-25T11:00:00Z",
            "language": "ru",
            "confidentiality": "confidential",
            "requesting_party": "KZ",
            "requested_party": "BY",
            "grounds": "Уголовное дело № 2026-0415",
            "purpose": "Установление источника поставки",
            "content": " ".join(WORDS[i % len(WORDS)] for i in range(filler + 1)),
            "expected_execution_date": "2026-12-25",
            "other_information": "",
            "direction": "drugs",
            "form": "crime_information",
            "attachments": attachments or [],
        }

    filler = 0
    while len(canonical_json(document_to_json(parse_document(build(filler))))) < target:
        filler += 1
    return parse_document(build(filler))


# --- part 1: a 1 KiB document ------------------------------------------------------------


@dataclass
class DocResult:
    suite: str
    doc_bytes: int
    envelope_bytes: int
    seal_s: float
    seal_raw_s: float
    open_s: float
    open_raw_s: float
    raw_parts: dict[str, float]
    validate_s: float


def bench_document(suite: str) -> DocResult:
    kz, by = make_party("KZ", suite), make_party("BY", suite)
    document = document_of_size(DOC_TARGET_BYTES)
    doc_bytes = len(canonical_json(document_to_json(document)))
    signed = sign_document(document, kz.signatory)
    envelope = seal(signed, kz.authorisation, [], kz.keys, by.trusted, NOW)
    framing = read_framing(envelope)
    inner = canonical_json(
        {
            "document": json.loads(signed),
            "authorisation": json.loads(kz.authorisation),
            "content_key": "A" * 43,
            "chunk_size": CHUNK_SIZE,
        }
    )
    info = envelope[12 : 12 + len(framing.header_bytes)]
    payload = envelope[12 + len(framing.header_bytes) : -64]

    def seal_and_sign() -> bytes:
        return seal(
            sign_document(document, kz.signatory), kz.authorisation, [], kz.keys, by.trusted, NOW, document
        )

    def verify_and_open() -> Any:
        return open(envelope, by.keys, kz.trusted, NOW)

    assert verify_and_open().document == document

    # The raw primitives, called directly: Ed25519 through libsodium (what ``protocol`` calls), HPKE through
    # ``cryptography``, SHA-256 through ``hashlib``. OpenSSL's Ed25519 is timed beside them, for information.
    person_sk = nacl.bindings.crypto_sign_seed_keypair(kz.signatory.seed)[1]
    node_sk = nacl.bindings.crypto_sign_seed_keypair(kz.node.seed)[1]
    person_pk, node_pk = kz.signatory.public.public, kz.node.public.public
    doc_pae = Signed.from_bytes(signed, what="bench").signed_bytes()
    node_msg = b"DSSEv1 35 application/vnd.prolink.envelope.v1 " + b"x" * (len(info) + 32)
    person_sig = nacl.bindings.crypto_sign(doc_pae, person_sk)[:64]
    node_sig = nacl.bindings.crypto_sign(node_msg, node_sk)[:64]
    auth = Signed.from_bytes(kz.authorisation, what="bench")
    root_pk = kz.root.public.public
    hpke_suite, hpke_pub, hpke_priv = by.decryption._suite, by.decryption.public._key, by.decryption._key
    sealed_body = hpke_suite.encrypt(inner, hpke_pub, info=info)
    openssl_node = Ed25519PrivateKey.from_private_bytes(kz.node.seed)
    openssl_node_pub = openssl_node.public_key()

    parts = {
        f"ed25519 sign (person, {len(doc_pae)} B)": lambda: nacl.bindings.crypto_sign(doc_pae, person_sk),
        "ed25519 sign (node)": lambda: nacl.bindings.crypto_sign(node_msg, node_sk),
        "ed25519 verify (node)": lambda: nacl.bindings.crypto_sign_open(node_sig + node_msg, node_pk),
        "ed25519 verify (person)": lambda: nacl.bindings.crypto_sign_open(person_sig + doc_pae, person_pk),
        "ed25519 verify (authorisation)": lambda: nacl.bindings.crypto_sign_open(
            auth.signature + auth.signed_bytes(), root_pk
        ),
        f"hpke encrypt ({len(inner)} B)": lambda: hpke_suite.encrypt(inner, hpke_pub, info=info),
        "hpke decrypt": lambda: hpke_suite.decrypt(sealed_body, hpke_priv, info=info),
        f"sha256 (payload, {len(payload)} B)": lambda: hashlib.sha256(payload).digest(),
        f"sha256 (envelope, {len(envelope)} B)": lambda: hashlib.sha256(envelope).digest(),
    }
    openssl = {
        "(info) ed25519 sign (node), OpenSSL": lambda: openssl_node.sign(node_msg),
        "(info) ed25519 verify (node), OpenSSL": lambda: openssl_node_pub.verify(node_sig, node_msg),
    }
    doc_json = document_to_json(document)
    timed = best_interleaved(
        {
            "seal+sign": seal_and_sign,
            "verify+open": verify_and_open,
            "validate": lambda: parse_document(doc_json),
            **parts,
            **openssl,
        }
    )
    raw = {name: timed[name] for name in parts}
    sign_p, sign_n, ver_n, ver_p, ver_a, enc, dec, sha_payload, sha_env = raw.values()
    seal_raw = sign_p + sign_n + enc + sha_payload
    open_raw = ver_n + ver_p + ver_a + dec + sha_payload + sha_env
    return DocResult(
        suite,
        doc_bytes,
        len(envelope),
        timed["seal+sign"],
        seal_raw,
        timed["verify+open"],
        open_raw,
        raw | {name: timed[name] for name in openssl},
        timed["validate"],
    )


# --- part 2: a 256 MiB attachment -------------------------------------------------------------

POOL = os.urandom(MIB)
POOL_CHUNKS = [POOL[i : i + CHUNK_SIZE] for i in range(0, MIB, CHUNK_SIZE)]


def plaintext(size: int = BIG) -> Iterator[bytes]:
    """``size`` bytes in 64 KiB pieces, cycling through a 1 MiB random pool."""
    full, rest = divmod(size, CHUNK_SIZE)
    for i in range(full):
        yield POOL_CHUNKS[i % len(POOL_CHUNKS)]
    if rest:
        yield POOL[:rest]


def plaintext_sha256(size: int = BIG) -> str:
    digest = hashlib.sha256()
    for piece in plaintext(size):
        digest.update(piece)
    return digest.hexdigest()


def read_pieces(f: BinaryIO, length: int, piece: int) -> Iterator[bytes]:
    f.seek(0)
    left = length
    while left:
        data = f.read(min(piece, left))
        if not data:
            raise EOFError
        left -= len(data)
        yield data


def nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


@dataclass
class StreamResult:
    rows: list[tuple[str, float, str]]  # (name, seconds for BIG bytes, note)
    raw_chunk_enc: float
    raw_chunk_dec: float
    raw_big_enc: float
    raw_big_dec: float
    sha: float
    enc: float
    dec: float
    seal: float
    open: float


def best_rounds(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Seconds for one call of each (long) function, best of ``rounds``, timed in turn within each round."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench_stream(rounds: int) -> StreamResult:
    key = os.urandom(32)
    aead = AESGCM(key)
    total_chunks = BIG // CHUNK_SIZE
    kz, by = make_party("KZ", PQ_HYBRID), make_party("BY", PQ_HYBRID)
    ref = {
        "name": "big.bin",
        "media_type": "application/octet-stream",
        "size": BIG,
        "sha256": plaintext_sha256(),
    }
    signed = sign_document(document_of_size(DOC_TARGET_BYTES, [ref]), kz.signatory)
    tmp = os.environ.get("BENCH_TMP")

    with tempfile.TemporaryFile(dir=tmp) as ct_file, tempfile.TemporaryFile(dir=tmp) as env_file:
        for sealed in encrypt_stream(key, plaintext(), BIG):
            ct_file.write(sealed)
        ct_len = ct_file.tell()
        assert ct_len == ciphertext_size(BIG)
        for piece in seal_stream(signed, kz.authorisation, [plaintext()], kz.keys, by.trusted, NOW):
            env_file.write(piece)

        def raw_chunk_encrypt() -> None:
            for i, piece in enumerate(plaintext()):
                aead.encrypt(nonce(i, i == total_chunks - 1), piece, None)

        def raw_chunk_decrypt() -> None:
            for i, piece in enumerate(read_pieces(ct_file, ct_len, SEALED_CHUNK)):
                aead.decrypt(nonce(i, i == total_chunks - 1), piece, None)

        def raw_sha() -> None:
            digest = hashlib.sha256()
            for piece in plaintext():
                digest.update(piece)

        def ours_encrypt() -> None:
            for _ in encrypt_stream(key, plaintext(), BIG):
                pass

        def ours_decrypt() -> None:
            for _ in decrypt_stream(key, read_pieces(ct_file, ct_len, SEALED_CHUNK), ct_len):
                pass

        def ours_seal() -> None:
            for _ in seal_stream(signed, kz.authorisation, [plaintext()], kz.keys, by.trusted, NOW):
                pass

        def ours_open() -> None:
            open(env_file, by.keys, kz.trusted, NOW, verify_attachments=True)

        t = best_rounds(
            {
                "raw_enc": raw_chunk_encrypt,
                "enc": ours_encrypt,
                "raw_dec": raw_chunk_decrypt,
                "dec": ours_decrypt,
                "sha": raw_sha,
                "seal": ours_seal,
                "open": ours_open,
            },
            rounds,
        )

    # Raw AES-GCM on one big buffer: holds 2 x 256 MiB, so it runs last (memory is measured elsewhere).
    buffers = {"plain": POOL * (BIG // MIB)}
    buffers["sealed"] = aead.encrypt(nonce(0, True), buffers["plain"], None)
    big = best_rounds(
        {
            "enc": lambda: aead.encrypt(nonce(0, True), buffers["plain"], None),
            "dec": lambda: aead.decrypt(nonce(0, True), buffers["sealed"], None),
        },
        rounds,
    )
    buffers.clear()

    chacha = ChaCha20Poly1305(key)
    xkey = os.urandom(32)

    def raw_chacha() -> None:
        for i, piece in enumerate(plaintext()):
            chacha.encrypt(nonce(i, False), piece, None)

    def raw_xchacha() -> None:
        for i, piece in enumerate(plaintext()):
            nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(piece, None, i.to_bytes(24, "big"), xkey)

    other = best_rounds({"chacha": raw_chacha, "xchacha": raw_xchacha}, 2)
    rows = [
        ("raw AES-256-GCM encrypt, 64 KiB chunks", t["raw_enc"], "baseline"),
        ("raw AES-256-GCM decrypt, 64 KiB chunks", t["raw_dec"], "baseline"),
        ("raw AES-256-GCM encrypt, one 256 MiB buffer", big["enc"], "baseline"),
        ("raw AES-256-GCM decrypt, one 256 MiB buffer", big["dec"], "baseline"),
        ("raw ChaCha20-Poly1305 encrypt, 64 KiB (cryptography)", other["chacha"], "info"),
        ("raw XChaCha20-Poly1305 encrypt, 64 KiB (PyNaCl)", other["xchacha"], "info"),
        ("raw SHA-256, 64 KiB pieces", t["sha"], "info"),
    ]
    return StreamResult(
        rows,
        t["raw_enc"],
        t["raw_dec"],
        big["enc"],
        big["dec"],
        t["sha"],
        t["enc"],
        t["dec"],
        t["seal"],
        t["open"],
    )


# --- memory, in a fresh child process ------------------------------------------------------------


def _rss_status() -> dict[str, int]:
    """VmRSS and VmHWM in bytes from /proc/self/status (Linux), else ru_maxrss for both."""
    try:
        with builtins.open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}
    except (OSError, KeyError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"VmRSS": rss, "VmHWM": rss}


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux: writing 5 to clear_refs), so growth is measured from here."""
    try:
        with builtins.open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def memory_child() -> None:
    """Stream 256 MiB through encrypt/decrypt_stream, then seal_stream/open; print peaks as JSON."""
    kz, by = make_party("KZ", PQ_HYBRID), make_party("BY", PQ_HYBRID)
    ref = {
        "name": "big.bin",
        "media_type": "application/octet-stream",
        "size": BIG,
        "sha256": plaintext_sha256(),
    }
    signed = sign_document(document_of_size(DOC_TARGET_BYTES, [ref]), kz.signatory)
    key = os.urandom(32)
    with (
        tempfile.TemporaryFile(dir=os.environ.get("BENCH_TMP")) as ct_file,
        tempfile.TemporaryFile(dir=os.environ.get("BENCH_TMP")) as env_file,
    ):
        _reset_peak_rss()
        start = _rss_status()
        tracemalloc.start()
        for sealed in encrypt_stream(key, plaintext(), BIG):
            ct_file.write(sealed)
        digest = hashlib.sha256()
        for piece in decrypt_stream(key, read_pieces(ct_file, ct_file.tell(), MIB), ct_file.tell()):
            digest.update(piece)
        assert digest.hexdigest() == ref["sha256"]
        _, stream_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for piece in seal_stream(signed, kz.authorisation, [plaintext()], kz.keys, by.trusted, NOW):
            env_file.write(piece)
        message = open(env_file, by.keys, kz.trusted, NOW, verify_attachments=True)
        digest = hashlib.sha256()
        for piece in message.attachment_chunks(0, env_file):
            digest.update(piece)
        assert digest.hexdigest() == ref["sha256"]
        _, envelope_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        end = _rss_status()
    print(
        json.dumps(
            {
                "stream_tracemalloc_peak": stream_peak,
                "envelope_tracemalloc_peak": envelope_peak,
                "rss_start": start["VmRSS"],
                "rss_peak": end["VmHWM"],
                "rss_growth": end["VmHWM"] - start["VmRSS"],
            }
        )
    )


def measure_memory() -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--memory-child"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --- report --------------------------------------------------------------------------------------


def mb_s(seconds: float, size: int = BIG) -> float:
    return size / seconds / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description="prolink protocol benchmark")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    if args.memory_child:
        memory_child()
        return 0
    repeat = 2 if args.quick else 5
    began = time.perf_counter()
    verdicts: list[tuple[str, bool]] = []

    print("prolink protocol benchmark")
    print(
        f"  Python {platform.python_version()}, cryptography {cryptography.__version__}, "
        f"{openssl_backend.openssl_version_text()}, "
        f"{os.cpu_count()} CPU(s), {platform.machine()}"
    )
    print()

    print(
        f"1. A {DOC_TARGET_BYTES / 1024:.0f} KiB document, no attachment "
        f"(ours / raw primitives of the same path, same run; target >= {RATIO_TARGET})"
    )
    header = f"  {'suite':<40} {'operation':<14} {'ours/s':>9} {'raw/s':>9} {'ratio':>6}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    results = [bench_document(suite) for suite in (PQ_HYBRID, CLASSIC)]
    for r in results:
        for op, ours, raw in (("seal+sign", r.seal_s, r.seal_raw_s), ("verify+open", r.open_s, r.open_raw_s)):
            ratio = raw / ours
            print(f"  {r.suite:<40} {op:<14} {1 / ours:9.0f} {1 / raw:9.0f} {ratio:6.2f}")
            verdicts.append(
                (f"{op:<11} {r.suite}: ratio {ratio:.2f} >= {RATIO_TARGET}", ratio >= RATIO_TARGET)
            )
    print(
        f"  document JSON {results[0].doc_bytes} B; envelope {results[0].envelope_bytes} B (hybrid), "
        f"{results[1].envelope_bytes} B (X25519)"
    )
    print("  raw primitive costs, microseconds per call:")
    names = list(results[0].raw_parts)
    print(f"    {'':<40} " + " ".join(f"{r.suite.split('/')[0]:>16}" for r in results))
    for i, name in enumerate(names):
        print(f"    {name:<40} " + " ".join(f"{list(r.raw_parts.values())[i] * 1e6:16.1f}" for r in results))
    print(
        "    seal raw = 2 signs + hpke encrypt + sha256(payload); "
        "open raw = 3 verifies + hpke decrypt + sha256(payload) + sha256(envelope)"
    )
    print("    (Ed25519 through libsodium, as protocol/ calls it; the (info) rows: OpenSSL's, not counted)")
    for r in results:
        print(
            f"  {r.suite.split('/')[0]}: document validation (parse_document, incl. Art. 8 checks) "
            f"{r.validate_s * 1e6:.0f} us, run once by seal and once by open: "
            f"{r.validate_s / r.seal_s:.0%} of seal+sign, {r.validate_s / r.open_s:.0%} of verify+open"
        )
    print()

    print(f"2. A {BIG // MIB} MiB attachment ({CHUNK_SIZE // 1024} KiB chunks)")
    s = bench_stream(repeat)
    fastest_enc = min(s.raw_chunk_enc, s.raw_big_enc)
    fastest_dec = min(s.raw_chunk_dec, s.raw_big_dec)
    print(f"  {'path':<56} {'MB/s':>8} {'vs AES 64K':>10} {'vs AES 1buf':>11}")
    print("  " + "-" * 88)
    for name, seconds, _ in s.rows:
        print(f"  {name:<56} {mb_s(seconds):8.0f}")
    ours_rows = [
        ("encrypt_stream", s.enc, s.raw_chunk_enc, s.raw_big_enc),
        ("decrypt_stream", s.dec, s.raw_chunk_dec, s.raw_big_dec),
        ("seal_stream (encrypt + 2 SHA-256 passes + node signature)", s.seal, s.raw_chunk_enc, s.raw_big_enc),
        ("open, verify_attachments (decrypt + 3 SHA-256 passes)", s.open, s.raw_chunk_dec, s.raw_big_dec),
    ]
    for name, seconds, chunk, big in ours_rows:
        print(f"  {name:<56} {mb_s(seconds):8.0f} {chunk / seconds:10.2f} {big / seconds:11.2f}")
    seal_same = s.raw_chunk_enc + 2 * s.sha
    open_same = s.raw_chunk_dec + 3 * s.sha
    print(
        f"  same primitives, raw: seal = AES-GCM + 2 x SHA-256 -> {mb_s(seal_same):.0f} MB/s; "
        f"open = AES-GCM + 3 x SHA-256 -> {mb_s(open_same):.0f} MB/s"
    )
    print(
        f"  seal_stream / same primitives: {seal_same / s.seal:.2f};  open / same primitives: "
        f"{open_same / s.open:.2f}"
    )
    enc_ratio, dec_ratio = fastest_enc / s.enc, fastest_dec / s.dec
    verdicts.append(
        (
            f"encrypt_stream throughput: {enc_ratio:.2f} of the fastest raw AES-256-GCM >= {RATIO_TARGET}",
            enc_ratio >= RATIO_TARGET,
        )
    )
    verdicts.append(
        (
            f"decrypt_stream throughput: {dec_ratio:.2f} of the fastest raw AES-256-GCM >= {RATIO_TARGET}",
            dec_ratio >= RATIO_TARGET,
        )
    )
    verdicts.append(
        (
            f"seal_stream throughput: {seal_same / s.seal:.2f} of the same raw primitives >= {RATIO_TARGET}",
            seal_same / s.seal >= RATIO_TARGET,
        )
    )
    verdicts.append(
        (
            f"open (verify) throughput: {open_same / s.open:.2f} of the same raw primitives >= "
            f"{RATIO_TARGET}",
            open_same / s.open >= RATIO_TARGET,
        )
    )
    print()

    mem = measure_memory()
    print(f"3. Peak memory streaming {BIG // MIB} MiB (fresh child process)")
    print(
        f"  encrypt_stream + decrypt_stream, tracemalloc peak: "
        f"{mem['stream_tracemalloc_peak'] / MIB:7.2f} MiB"
    )
    print(
        f"  seal_stream + open + read attachment, tracemalloc peak: "
        f"{mem['envelope_tracemalloc_peak'] / MIB:7.2f} MiB"
    )
    print(
        f"  resident set growth over both (peak VmHWM - VmRSS at start): "
        f"{mem['rss_growth'] / MIB:7.2f} MiB "
        f"(from {mem['rss_start'] / MIB:.0f} to a peak of {mem['rss_peak'] / MIB:.0f} MiB)"
    )
    peak = max(mem["stream_tracemalloc_peak"], mem["envelope_tracemalloc_peak"], mem["rss_growth"])
    verdicts.append((f"peak memory {peak / MIB:.1f} MiB < {MEMORY_TARGET // MIB} MiB", peak < MEMORY_TARGET))
    print()

    for text, ok in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    print(f"(benchmark took {time.perf_counter() - began:.0f} s)")
    return 0 if all(ok for _, ok in verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())

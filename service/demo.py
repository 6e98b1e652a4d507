"""``prolink demo``: two Parties on loopback, one full signed and encrypted exchange.

Creates KZ and BY in a temporary directory, exchanges their bundles (checking
fingerprints), starts both nodes as real processes with mutual TLS, sends a
Russian-language request with a 5 MiB attachment from KZ to BY, reads it on
the BY side, sends the execution result back, verifies both signed receipts
independently, and prints one JSON line summarising the run. Exits non-zero
if any step fails, and cleans up after itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ATTACHMENT_SIZE = 5 * 1024 * 1024


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: Ports handed out by this process, each held by a bound, non-listening socket until ``release_port``.
_reserved: dict[int, socket.socket | None] = {}


def free_port() -> int:
    """A loopback port nothing listens on, for a node started a few seconds later.

    Taken below the kernel's ephemeral range: a port that ``bind(0)`` hands out is also one the kernel
    gives to outgoing connections (to PostgreSQL, to the other node), so one could take it before the
    node binds it, and the node would not start. Never the same port twice in one process, and held
    until the node has bound it (``release_port``): the holding socket is bound first without
    ``SO_REUSEADDR`` (refused if any socket, another process's holder included, has the port), then
    allows reuse, so a server (which binds with ``SO_REUSEADDR``, as uvicorn does) can still listen on
    it while another process's plain ``bind`` is refused. Where the ephemeral range leaves no room
    below it, any free port (``bind(0)``), unheld."""
    low = _ephemeral_low()
    if low <= 21000:
        port = _any_port()
        _reserved.setdefault(port, None)
        return port
    for _ in range(200):
        port = random.randrange(20000, low)  # noqa: S311 (not a secret)
        if port in _reserved:
            continue
        holder = _hold(port)
        if holder is not None:
            _reserved[port] = holder
            return port
    raise RuntimeError("no free loopback port found")


def release_port(port: int) -> None:
    """Stop holding ``port`` (its node has bound it); it is still never handed out again here."""
    holder = _reserved.get(port)
    if holder is not None:
        holder.close()
        _reserved[port] = None


def _ephemeral_low() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _any_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hold(port: int) -> socket.socket | None:
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", port))
    except OSError:
        holder.close()
        return None
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return holder


@dataclass
class DemoParty:
    party: str
    name: str
    data_dir: Path
    peer_port: int
    user_port: int
    tokens: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def log_tail(self, lines: int = 20) -> str:
        """The end of the node's log, to say why it stopped."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.peer_port}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.user_port}"

    def client(self, role: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.api, headers={"authorization": f"Bearer {self.tokens[role]}"}, timeout=60.0
        )


def setup_party(
    root: Path,
    party: str,
    name: str,
    database_url: str | None = None,
    backdate: timedelta = timedelta(0),
    **settings: Any,
) -> DemoParty:
    """Initialise a Party and its users (also used by the tests): keys, configuration and database as
    ``prolink init`` makes them; the users are written straight to the database, without the audit
    entries ``prolink user add`` records, so a test's audit log starts with what the test itself did."""
    from keys import add_signatory, generate_identity
    from service.auth import create_user
    from service.db import make_engine
    from service.migrate import upgrade
    from service.settings import Settings

    p = DemoParty(party, name, root / party.lower(), free_port(), free_port())
    now = datetime.now(UTC) - backdate  # tests back-date keys to craft old envelopes
    settings.setdefault("worker_poll_seconds", 0.2)
    config = Settings(
        data_dir=p.data_dir,
        party=party,
        party_name=name,
        public_url=p.url,
        peer_host="127.0.0.1",
        peer_port=p.peer_port,
        user_port=p.user_port,
        database_url=database_url or "",
        **settings,
    )
    generate_identity(config.data_dir, party, name, p.url, now)
    config.save()
    upgrade(config.database_url)
    engine = make_engine(config.database_url)
    signatory = add_signatory(
        config.data_dir,
        f"Подписант {party}",
        "заместитель Генерального прокурора",
        now.date(),
        now.date() + timedelta(days=365),
        now,
    )
    for role in ("clerk", "reader", "operator"):
        _, p.tokens[role] = create_user(engine, f"{role} {party}", role, now, clearance="confidential")
    _, p.tokens["signatory"] = create_user(
        engine,
        f"Подписант {party}",
        "signatory",
        now,
        clearance="confidential",
        signatory_key_id=signatory.key.key_id,
    )
    engine.dispose()
    return p


def introduce(a: DemoParty, b: DemoParty) -> str:
    """``a`` imports ``b``'s bundle after checking the fingerprint ``b`` would read out."""
    from keys import export_bundle
    from service.server import build_node

    bundle, fingerprint = export_bundle(b.data_dir)
    node = build_node(a.data_dir)
    node.add_peer(bundle, fingerprint)
    node.engine.dispose()
    return fingerprint


def start(p: DemoParty, log_dir: Path, env: dict[str, str] | None = None) -> None:
    """Start ``prolink serve`` for ``p`` as a separate process (output appended to its log)."""
    p.log_path = log_dir / f"{p.party.lower()}.log"
    log = p.log_path.open("ab")
    p.process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-m", "service", "serve", "--data-dir", str(p.data_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    log.close()


def wait_ready(p: DemoParty, timeout: float = 60.0) -> None:
    def ready() -> bool:
        if p.process is not None and p.process.poll() is not None:
            raise RuntimeError(
                f"{p.party} node exited with {p.process.returncode}; its log ends:\n{p.log_tail()}"
            )
        return httpx.get(p.api + "/healthz", timeout=2).status_code == 200

    wait_until(f"{p.party} node", ready, timeout)
    release_port(p.peer_port)  # the node listens on both now
    release_port(p.user_port)


def stop(p: DemoParty, *, kill: bool = False) -> None:
    """Stop the node process: SIGTERM (graceful), or SIGKILL with ``kill=True`` (a crash)."""
    if p.process is None:
        return
    if kill:
        p.process.kill()
    else:
        p.process.terminate()
    try:
        p.process.wait(15)
    except subprocess.TimeoutExpired:
        p.process.kill()
        p.process.wait(5)
    p.process = None


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}" + (f" ({last})" if last else ""))


def wait_delivered(client: httpx.Client, message_id: str) -> dict[str, Any]:
    def delivered() -> dict[str, Any] | None:
        view = client.get(f"/v1/messages/out/{message_id}").json()
        if view.get("status") in ("rejected", "parked"):
            raise RuntimeError(f"message {message_id} ended {view['status']}")
        return view if view.get("status") == "delivered" else None

    return wait_until(f"delivery of {message_id}", delivered)  # type: ignore[no-any-return]


def verify_receipt_offline(view: dict[str, Any], receiver: DemoParty, sender_party: str) -> bool:
    """Check a stored receipt with nothing but the receiver's public bundle."""
    import protocol
    from keys import export_bundle

    bundle, fingerprint = export_bundle(receiver.data_dir)
    trusted = protocol.verify_bundle(bundle, expected_fingerprint=fingerprint)
    receipt = protocol.Signed.from_json(view["receipt"], what="receipt").to_bytes()
    result = protocol.verify_receipt(
        receipt,
        trusted,
        envelope_sha256=bytes.fromhex(view["envelope_sha256"]),
        message_id=view["id"],
        sender=sender_party,
    )
    return result.accepted


def run_demo(keep: bool = False) -> int:
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="prolink-demo-"))
    parties: list[DemoParty] = []
    summary: dict[str, Any] = {"ok": False}
    step = 0

    def say(text: str) -> None:
        nonlocal step
        step += 1
        print(f"[{step}] {text}", flush=True)

    try:
        say("Creating two Parties in " + str(root))
        kz = setup_party(root, "KZ", "Генеральная прокуратура Республики Казахстан")
        by = setup_party(root, "BY", "Генеральная прокуратура Республики Беларусь")
        parties += [kz, by]
        print(f"    KZ peer API {kz.url}, user API {kz.api}; BY peer API {by.url}, user API {by.api}")
        say("Exchanging bundles; each side checks the other's root key fingerprint")
        print(f"    KZ imports BY, fingerprint {introduce(kz, by)}")
        print(f"    BY imports KZ, fingerprint {introduce(by, kz)}")
        say("Starting both nodes as separate processes (mutual TLS 1.3 between them)")
        for p in parties:
            start(p, root)
        for p in parties:
            wait_ready(p)

        attachment = os.urandom(ATTACHMENT_SIZE)
        attachment_sha = hashlib.sha256(attachment).hexdigest()
        request_doc = {
            "kind": "request",
            "recipient_party": "BY",
            "urgent": False,
            "grounds": "Уголовное дело № 2026-0451, статья 190 УК Республики Казахстан (мошенничество).",
            "purpose": "Установление владельца банковского счёта для расследования уголовного дела.",
            "content": "Просим предоставить сведения о владельце счёта BY12 ALFA 3012 0000 0000 0000 и "
            "выписку операций за период с 1 января по 30 июня 2026 года.",
            "expected_execution_date": (datetime.now(UTC).date() + timedelta(days=30)).isoformat(),
            "other_information": "Контактное лицо: старший прокурор отдела международного сотрудничества.",
            "direction": "economic_crime",
            "form": "crime_information",
            "confidentiality": "confidential",
            "purpose_code": "criminal_investigation",
            "case_number": "2026-0451",
        }
        use = {"purpose_code": "criminal_investigation", "case_number": "2026-0451"}
        say("KZ signatory signs and sends a request in Russian with a 5 MiB attachment")
        with kz.client("signatory") as c:
            r = c.post(
                "/v1/messages",
                data={"document": json.dumps(request_doc, ensure_ascii=False)},
                files=[("attachments", ("выписка.pdf", attachment, "application/pdf"))],
            )
            if r.status_code != 201:
                raise RuntimeError(f"sending the request failed: {r.status_code} {r.text}")
            request_id = r.json()["id"]
            print(f"    request {request_id} sealed and queued ({r.json()['envelope_size']} bytes)")
            sent = wait_delivered(c, request_id)
        print(f"    delivered; BY's signed receipt stored ({sent['receipt_status']})")

        say(
            "BY reads the request for its stated purpose and case (Art. 7: checked, then audited), "
            "decrypted after verifying both signatures and the authorisation"
        )
        with by.client("reader") as c:
            content = c.get(f"/v1/messages/in/{request_id}/content", params=use).json()
            doc = content["document"]
            print(
                f"    from {content['sender']}, signed by {content['signed_by']['person']} "
                f"({content['signed_by']['position']})"
            )
            print(f"    purpose: {doc['purpose']}")
            got = c.get(f"/v1/messages/in/{request_id}/attachments/0", params=use)
            got_sha = hashlib.sha256(got.content).hexdigest()
            if got.status_code != 200 or got_sha != attachment_sha:
                raise RuntimeError("the attachment BY received differs from what KZ sent")
            print(
                f"    attachment {doc['attachments'][0]['name']}: {len(got.content)} bytes, SHA-256 matches"
            )

        say("BY signatory accepts the request, then sends the execution result back in the same thread")
        with by.client("signatory") as c:
            r = c.post(
                "/v1/messages",
                json={
                    "kind": "acceptance",
                    "in_reply_to": request_id,
                    "confidentiality": "confidential",
                    "note": "Запрос принят к исполнению.",
                },
            )
            if r.status_code != 201:
                raise RuntimeError(f"sending the acceptance failed: {r.status_code} {r.text}")
            wait_delivered(c, r.json()["id"])
        print(f"    acceptance {r.json()['id']} delivered")
        result_doc = {
            "kind": "execution_result",
            "in_reply_to": request_id,
            "confidentiality": "confidential",
            "summary": "Запрос исполнен: владелец счёта установлен, выписка операций прилагается.",
        }
        with by.client("signatory") as c:
            r = c.post("/v1/messages", json=result_doc)
            if r.status_code != 201:
                raise RuntimeError(f"sending the result failed: {r.status_code} {r.text}")
            result_id = r.json()["id"]
            result_sent = wait_delivered(c, result_id)
        print(f"    result {result_id} delivered")
        with kz.client("reader") as c:
            kz_view = c.get(f"/v1/messages/in/{result_id}/content", params=use).json()
            print(f"    KZ reads: {kz_view['document']['summary']}")

        say("Verifying both signed receipts offline, from the public bundles alone")
        receipts_ok = [verify_receipt_offline(sent, by, "KZ"), verify_receipt_offline(result_sent, kz, "BY")]
        print(f"    request receipt (signed by BY): {'valid' if receipts_ok[0] else 'INVALID'}")
        print(f"    result receipt (signed by KZ): {'valid' if receipts_ok[1] else 'INVALID'}")
        if not all(receipts_ok):
            raise RuntimeError("a receipt did not verify")
        summary = {
            "ok": True,
            "request_id": request_id,
            "result_id": result_id,
            "request_status": sent["status"],
            "result_status": result_sent["status"],
            "receipts_verified": sum(receipts_ok),
            "attachment_bytes": ATTACHMENT_SIZE,
            "attachment_sha256_match": True,
        }
    except Exception as exc:  # noqa: BLE001 - the demo reports any failure in its summary
        print(f"FAILED: {type(exc).__name__}: {exc}", flush=True)
        for p in parties:
            log = root / f"{p.party.lower()}.log"
            if log.exists():
                print(f"--- {p.party} node log (last lines) ---")
                print("\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        summary["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for p in parties:
            stop(p)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    summary["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return 0 if summary["ok"] else 1

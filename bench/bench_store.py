"""CPU per stored send: ``Node._store_sends`` with groups of messages against groups of one, in one run.

The store is what group commit amortises: one transaction (begin, lifecycle
read, audit-log lock, commit) per group, and since the batched writes one
statement per table per group. Messages are composed, signed and sealed
beforehand (not measured); each round stores fresh ones on SQLite in a
temporary directory. Printed: CPU microseconds per message for each group size
(best of three rounds, ``time.process_time``) and its ratio to groups of one.

    python bench/bench_store.py                 # groups of 8 against groups of 1
    python bench/bench_store.py --group 16 --groups 100
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
from sqlalchemy import select  # noqa: E402

from bench.bench_exchange import russian_document  # noqa: E402
from service import demo  # noqa: E402
from service.db import session_scope  # noqa: E402
from service.models import User  # noqa: E402
from service.server import build_node  # noqa: E402
from service.user_api import compose_for  # noqa: E402


def cpu_per_message(node, sealed: list, group: int, rounds: int = 3) -> float:  # type: ignore[no-untyped-def]
    """Best of ``rounds``: CPU seconds per message storing ``sealed`` in groups of ``group``."""
    per_round = len(sealed) // rounds
    best = float("inf")
    for r in range(rounds):
        part = sealed[r * per_round:(r + 1) * per_round]
        started = time.process_time()
        for i in range(0, len(part), group):
            node._store_sends(part[i:i + group])
        best = min(best, (time.process_time() - started) / len(part))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", type=int, default=8, help="messages per group (against groups of 1)")
    parser.add_argument("--groups", type=int, default=150, help="groups per round")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kz, by = demo.setup_party(root, "KZ", "Kaz"), demo.setup_party(root, "BY", "Bel")
        demo.introduce(kz, by)
        demo.introduce(by, kz)
        node = build_node(kz.data_dir)
        with session_scope(node.engine, readonly=True) as s:
            key_id = s.execute(select(User.signatory_key_id).where(
                User.signatory_key_id.is_not(None))).scalar_one()  # type: ignore[union-attr]
        signatory, recipient = node.signatory(key_id), node.peer("BY", active_only=False)
        fields = russian_document("BY")

        def sealed(count: int) -> list:  # type: ignore[type-arg]
            return [node._seal(compose_for(node, dict(fields), []), signatory, [], "user:bench", recipient)
                    for _ in range(count)]

        count = 3 * args.groups * args.group
        node._store_sends(sealed(20))  # warm: caches, compiled statements
        alone = cpu_per_message(node, sealed(count), 1)
        grouped = cpu_per_message(node, sealed(count), args.group)
    print(f"_store_sends, groups of 1:  {alone * 1e6:6.0f} us CPU per message")
    print(f"_store_sends, groups of {args.group}: {grouped * 1e6:6.0f} us CPU per message   "
          f"ratio {grouped / alone:.2f} of groups of 1")


if __name__ == "__main__":
    main()

"""Merkle trees of the audit log, hashed as in RFC 9162 (Certificate Transparency 2.0), §2.1.

* leaf hash ``SHA-256(0x00 || entry)``, interior node ``SHA-256(0x01 || left || right)``,
  the empty tree hashes to ``SHA-256("")`` (§2.1.1);
* the tree over ``n`` leaves splits at ``k``, the largest power of two smaller
  than ``n``, so every left subtree is *perfect* (``2^l`` leaves, starting at a
  multiple of ``2^l``). Any hash a proof needs is therefore either such a
  perfect subtree or a right edge made of a few of them;
* inclusion proofs (``PATH``, §2.1.3.1) and consistency proofs (``PROOF``,
  §2.1.4.1) are generated against a ``NodeGetter`` -- "hash of the perfect
  subtree at (level, index)" -- so a store that keeps those hashes answers any
  proof at any size with O(log n) reads; verification follows §2.1.3.2 and
  §2.1.4.2 step by step;
* ``CompactRange`` (the "frontier") holds one hash per set bit of the size:
  appending a leaf costs O(log n) hashes and yields the perfect subtrees it
  completes, and the root of the current tree is O(log n) away.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from ._errors import LogError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

#: ``get(level, index)`` -> hash of the perfect subtree over leaves
#: ``[index * 2**level, (index + 1) * 2**level)``; level 0 is the leaf hash.
NodeGetter = Callable[[int, int], bytes]

_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 §2.1.1: ``MTH({d(0)}) = SHA-256(0x00 || d(0))``."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: ``SHA-256(0x01 || MTH(left) || MTH(right))``."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _is_perfect(start: int, end: int) -> bool:
    n = end - start
    return n > 0 and n & (n - 1) == 0 and start % n == 0


# --- the frontier ---------------------------------------------------------------


class CompactRange:
    """The right edge of a tree of ``size`` leaves: one perfect-subtree hash per set bit of ``size``.

    ``hashes`` are ordered from the largest (leftmost) subtree to the smallest,
    which is also the order of the set bits of ``size`` from high to low. This
    is the whole state an append-only log needs to extend its tree and compute
    its root.
    """

    __slots__ = ("_hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(hashes) != bin(size).count("1"):
            raise LogError(
                f"a compact range of size {size} has {bin(max(size, 0)).count('1')} hashes, "
                f"not {len(hashes)}",
                code="audit.bad_range",
            )
        if any(len(h) != HASH_SIZE for h in hashes):
            raise LogError("compact range hashes are 32 bytes", code="audit.bad_range")
        self.size = size
        self._hashes = list(hashes)

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self._hashes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return the perfect subtrees (level >= 1, index, hash) it completed."""
        completed: list[tuple[int, int, bytes]] = []
        hashes, size, carry, level = self._hashes, self.size, leaf, 0
        while size >> level & 1:
            carry = _sha256(b"\x01" + hashes.pop() + carry).digest()
            level += 1
            completed.append((level, size >> level, carry))
        hashes.append(carry)
        self.size = size + 1
        return completed

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append many leaf hashes (the fast path of offline verification: nothing is returned)."""
        hashes, size = self._hashes, self.size
        pop, push = hashes.pop, hashes.append
        for carry in leaves:
            bits = size
            while bits & 1:
                carry = _sha256(b"\x01" + pop() + carry).digest()
                bits >>= 1
            push(carry)
            size += 1
        self.size = size

    def root(self) -> bytes:
        """``MTH`` of the whole tree: fold the right edge from the smallest subtree leftwards."""
        if not self._hashes:
            return EMPTY_ROOT
        acc = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            acc = node_hash(h, acc)
        return acc

    @staticmethod
    def positions(size: int) -> list[tuple[int, int]]:
        """(level, index) of the perfect subtrees that make up the first ``size`` leaves, left to right."""
        out: list[tuple[int, int]] = []
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if size >> level & 1:
                out.append((level, start >> level))
                start += 1 << level
        return out

    @classmethod
    def at(cls, get: NodeGetter, size: int) -> CompactRange:
        """The compact range of the first ``size`` leaves of a stored tree (O(log n) reads)."""
        return cls(size, [get(level, index) for level, index in cls.positions(size)])


def root_of(leaf_hashes: Iterable[bytes]) -> bytes:
    """``MTH`` of a list of leaf hashes."""
    cr = CompactRange()
    cr.extend(leaf_hashes)
    return cr.root()


# --- proofs against a store of perfect subtrees -----------------------------------


def subtree_hash(get: NodeGetter, start: int, end: int) -> bytes:
    """``MTH(D[start:end])`` for a range of the RFC 9162 recursion (a perfect subtree or a right edge)."""
    if end <= start:
        raise ValueError("empty range")
    if _is_perfect(start, end):
        n = end - start
        level = n.bit_length() - 1
        return get(level, start >> level)
    k = _split(end - start)
    if start % k:
        raise ValueError(f"range [{start}, {end}) is not one the tree is built from")
    return node_hash(get(k.bit_length() - 1, start // k), subtree_hash(get, start + k, end))


def inclusion_proof(get: NodeGetter, index: int, size: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 ``PATH(index, D[size])``, innermost sibling first."""
    if not 0 <= index < size:
        raise LogError(f"leaf {index} is not in a tree of size {size}", code="audit.bad_inclusion_proof")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(subtree_hash(get, start + k, end))
            end = start + k
        else:
            path.append(subtree_hash(get, start, start + k))
            start += k
    path.reverse()
    return path


def consistency_proof(get: NodeGetter, old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162 §2.1.4.1 ``PROOF(old_size, D[new_size])``; empty if ``old_size`` is 0 or ``new_size``."""
    if not 0 <= old_size <= new_size:
        raise LogError(f"no consistency proof from size {old_size} to {new_size}", code="audit.inconsistent")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    start, end, complete = 0, new_size, True  # SUBPROOF(m, D[start:end], b)
    while True:
        if old_size == end:
            if not complete:
                proof.append(subtree_hash(get, start, end))
            break
        k = _split(end - start)
        if old_size <= start + k:
            proof.append(subtree_hash(get, start + k, end))
            end = start + k
        else:
            proof.append(subtree_hash(get, start, start + k))
            start += k
            complete = False
    proof.reverse()
    return proof


def needed_nodes(compute: Callable[[NodeGetter], object]) -> set[tuple[int, int]]:
    """The (level, index) nodes ``compute`` would read: run it once against a recording getter.

    Lets a database-backed store fetch every node of a proof in one query.
    """
    seen: set[tuple[int, int]] = set()

    def record(level: int, index: int) -> bytes:
        seen.add((level, index))
        return b"\x00" * HASH_SIZE

    compute(record)
    return seen


class MemoryTree:
    """Every perfect subtree of a list of leaves, kept in memory: for tests, benchmarks and small exports."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        self._edge = CompactRange()
        for h in leaf_hashes:
            self.append(h)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> None:
        self.levels[0].append(leaf)
        for level, index, h in self._edge.append(leaf):
            while len(self.levels) <= level:
                self.levels.append([])
            assert len(self.levels[level]) == index
            self.levels[level].append(h)

    def get(self, level: int, index: int) -> bytes:
        return self.levels[level][index]

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if size == 0:
            return EMPTY_ROOT
        return subtree_hash(self.get, 0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(self.get, index, self.size if size is None else size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return consistency_proof(self.get, old_size, self.size if new_size is None else new_size)


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) --------------------------------------


def _check_hashes(proof: Sequence[bytes], what: str, code: str) -> None:
    if len(proof) > 64 or any(not isinstance(h, bytes) or len(h) != HASH_SIZE for h in proof):
        raise LogError(f"{what}: proof hashes must be at most 64 values of 32 bytes", code=code)


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ``LogError`` unless ``proof`` puts leaf hash ``leaf`` at ``index`` of the tree (size, root)."""
    code = "audit.bad_inclusion_proof"
    _check_hashes(proof, "inclusion proof", code)
    if not 0 <= index < size:  # step 1
        raise LogError(f"leaf index {index} is outside a tree of size {size}", code=code)
    fn, sn, r = index, size - 1, leaf  # steps 2-3
    for p in proof:  # step 4
        if sn == 0:
            raise LogError("inclusion proof is longer than the tree is deep", code=code)
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # step 5
        raise LogError("inclusion proof is shorter than the tree is deep", code=code)
    if r != root:
        raise LogError(f"leaf {index} is not in the tree of size {size} with this root", code=code)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ``LogError`` (``audit.inconsistent``) unless tree (old_size, old_root) prefixes the new one."""
    code = "audit.inconsistent"
    _check_hashes(proof, "consistency proof", code)
    if not 0 <= old_size <= new_size:
        raise LogError(f"a tree of size {new_size} cannot extend one of size {old_size}", code=code)
    if old_size == new_size:
        if proof:
            raise LogError("a consistency proof between equal sizes must be empty", code=code)
        if old_root != new_root:
            raise LogError(f"two different roots for the same size {old_size}", code=code)
        return
    if old_size == 0:
        if proof:
            raise LogError("a consistency proof from the empty tree must be empty", code=code)
        return
    if not proof:  # step 1
        raise LogError(f"no consistency proof given from size {old_size} to {new_size}", code=code)
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # step 2: old_size is an exact power of 2
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:
            raise LogError("consistency proof is longer than the tree is deep", code=code)
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # step 7
        raise LogError("consistency proof is shorter than the tree is deep", code=code)
    if fr != old_root:
        raise LogError(
            f"the tree of size {new_size} does not contain the tree of size {old_size} "
            f"that was signed before: the log was rewritten",
            code=code,
        )
    if sr != new_root:
        raise LogError(f"consistency proof does not lead to the root of size {new_size}", code=code)

"""RFC 9162 Merkle trees: the Certificate Transparency test vectors, then properties at every small size.

The vectors are the well-known eight-leaf tree of the CT reference
implementations (google/certificate-transparency ``merkle_tree_test.cc``,
transparency-dev/merkle ``testonly``): its leaves, the root at every size,
the hash of every perfect subtree, and the reference inclusion and
consistency proofs. A second implementation can check itself against the same
table.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    EMPTY_ROOT,
    CompactRange,
    LogError,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]

ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # empty tree: SHA-256("")
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

#: Every perfect subtree of the eight-leaf tree, level by level (level 0: leaf hashes).
NODES = [
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]

# (leaf index, tree size, path): RFC 9162 PATH; indexes 0-based.
INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

# (old size, new size, proof): RFC 9162 PROOF.
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


def hexes(hs: list[bytes]) -> list[str]:
    return [h.hex() for h in hs]


@pytest.fixture(scope="module")
def tree() -> MemoryTree:
    return MemoryTree(leaf_hash(leaf) for leaf in LEAVES)


def test_hashing_is_domain_separated_as_rfc_9162_section_2_1_1() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()
    # A leaf can never be read as an interior node: the prefixes differ.
    assert leaf_hash(b"L" * 32 + b"R" * 32) != node_hash(b"L" * 32, b"R" * 32)


def test_roots_of_every_prefix_match_the_ct_vectors(tree: MemoryTree) -> None:
    assert [tree.root(n).hex() for n in range(9)] == ROOTS
    for n in range(9):
        assert root_of(leaf_hash(leaf) for leaf in LEAVES[:n]).hex() == ROOTS[n]


def test_every_stored_subtree_matches_the_ct_vectors(tree: MemoryTree) -> None:
    assert [[h.hex() for h in level] for level in tree.levels] == NODES


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_proofs_match_the_ct_vectors(
    tree: MemoryTree, index: int, size: int, path: list[str]
) -> None:
    assert hexes(tree.inclusion_proof(index, size)) == path
    verify_inclusion(
        leaf_hash(LEAVES[index]), index, size, [bytes.fromhex(h) for h in path], bytes.fromhex(ROOTS[size])
    )


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_ct_vectors(
    tree: MemoryTree, old: int, new: int, proof: list[str]
) -> None:
    assert hexes(tree.consistency_proof(old, new)) == proof
    verify_consistency(
        old, new, bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new]), [bytes.fromhex(h) for h in proof]
    )


def test_a_wrong_inclusion_proof_is_refused(tree: MemoryTree) -> None:
    index, size, path = INCLUSION[2]
    proof = [bytes.fromhex(h) for h in path]
    root = bytes.fromhex(ROOTS[size])
    leaf = leaf_hash(LEAVES[index])
    with pytest.raises(LogError, match="not in the tree"):
        verify_inclusion(leaf, index - 1, size, proof, root)  # wrong position
    with pytest.raises(LogError, match="not in the tree"):
        verify_inclusion(leaf_hash(b"forged"), index, size, proof, root)  # other content
    with pytest.raises(LogError, match="shorter"):
        verify_inclusion(leaf, index, size, proof[:-1], root)
    with pytest.raises(LogError, match="longer"):
        verify_inclusion(leaf, index, size, [*proof, proof[0]], root)
    with pytest.raises(LogError, match="outside"):
        verify_inclusion(leaf, 8, 8, proof, root)


def test_a_rewritten_history_fails_the_consistency_check(tree: MemoryTree) -> None:
    old, new, path = CONSISTENCY[2]
    proof = [bytes.fromhex(h) for h in path]
    other = MemoryTree(leaf_hash(x) for x in [*LEAVES[:3], b"rewritten", *LEAVES[4:]])
    with pytest.raises(LogError, match="does not contain the tree of size 6") as err:
        verify_consistency(
            old, new, bytes.fromhex(ROOTS[old]), other.root(new), other.consistency_proof(old, new)
        )
    assert err.value.code == "audit.inconsistent"
    with pytest.raises(LogError):
        verify_consistency(old, new, bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new]), proof[:-1])
    with pytest.raises(LogError, match="same size"):
        verify_consistency(8, 8, bytes.fromhex(ROOTS[8]), other.root(8), [])
    with pytest.raises(LogError, match="no consistency proof"):
        verify_consistency(3, 8, bytes.fromhex(ROOTS[3]), bytes.fromhex(ROOTS[8]), [])
    with pytest.raises(LogError, match="cannot extend"):
        verify_consistency(8, 3, bytes.fromhex(ROOTS[8]), bytes.fromhex(ROOTS[3]), [])


def test_every_proof_verifies_and_every_other_root_fails_at_all_sizes_up_to_70() -> None:
    leaves = [leaf_hash(i.to_bytes(2, "big")) for i in range(70)]
    t = MemoryTree(leaves)
    for n in range(1, 71):
        root = t.root(n)
        for i in range(n):
            proof = t.inclusion_proof(i, n)
            assert len(proof) <= (n - 1).bit_length()
            verify_inclusion(leaves[i], i, n, proof, root)
        for m in range(0, n + 1):
            proof = t.consistency_proof(m, n)
            assert len(proof) <= 2 * n.bit_length()
            verify_consistency(m, n, t.root(m), root, proof)
            if 0 < m < n:
                with pytest.raises(LogError):
                    verify_consistency(m, n, t.root(m - 1) if m > 1 else leaf_hash(b"x"), root, proof)


@given(st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=300))
def test_compact_range_gives_the_root_and_resumes_from_any_size(split: int, extra: int) -> None:
    leaves = [leaf_hash(i.to_bytes(2, "big")) for i in range(split + extra)]
    t = MemoryTree(leaves)
    # The compact range of the first `split` leaves, read from the stored subtrees, extends to the full tree.
    cr = CompactRange.at(t.get, split)
    assert len(cr.hashes) == bin(split).count("1")
    assert cr.root() == t.root(split)
    completed = []
    for leaf in leaves[split:]:
        completed += cr.append(leaf)
    assert cr.root() == t.root()
    # Appending reports exactly the perfect subtrees (level >= 1) that became complete.
    for level, index, h in completed:
        assert t.get(level, index) == h
    expected = sum(
        1 for level in range(1, 10) for index in range(len(leaves) >> level) if (index + 1) << level > split
    )
    assert len(completed) == expected


def test_proofs_are_logarithmic_at_a_million_leaves() -> None:
    """Proof generation reads O(log n) perfect subtrees, whatever the size."""
    from protocol import needed_nodes

    n = 1_000_003
    reads = needed_nodes(lambda get: inclusion_proof(get, 123_456, n))
    assert len(reads) <= 2 * n.bit_length()
    reads = needed_nodes(lambda get: consistency_proof(get, 777_777, n))
    assert len(reads) <= 2 * n.bit_length()
    assert len(CompactRange.positions(n)) == bin(n).count("1")

"""Byte-level encodings: DSSE PAE, strict base64url, canonical JSON, strict JSON parsing."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    EncodingError,
    Signed,
    SigningKey,
    b64d,
    b64e,
    canonical_json,
    compact_json,
    pae,
    parse_json,
    read_json,
)

# --- DSSE (https://github.com/secure-systems-lab/dsse, protocol.md) -----------------------


def test_pae_matches_the_dsse_spec_example() -> None:
    """protocol.md, "Test Vectors": payloadType http://example.com/HelloWorld, body "hello world"."""
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_lengths_are_byte_lengths_of_utf8() -> None:
    assert pae("application/vnd.exämple+json", b"{}") == b"DSSEv1 29 application/vnd.ex\xc3\xa4mple+json 2 {}"
    assert pae("t", "ё".encode()) == b"DSSEv1 1 t 2 \xd1\x91"


def test_pae_of_an_empty_body_ends_with_a_space() -> None:
    assert pae("application/vnd.in-toto+json", b"") == b"DSSEv1 28 application/vnd.in-toto+json 0 "


def test_pae_separates_type_and_body_unambiguously() -> None:
    assert pae("a b", b"c") != pae("a", b"b c")


def test_dsse_ed25519_signature_over_pae_is_byte_exact() -> None:
    """The RFC 8032 TEST 1 key signing the PAE of an in-toto statement (deterministic Ed25519).

    PAE and signature as in the "single-signature" case of the DSSE repository's
    ``testvectors/vectors.json`` (signature there in standard base64).
    """
    key = SigningKey(bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    body = b'{"_type":"https://in-toto.io/Statement/v1"}'
    message = pae("application/vnd.in-toto+json", body)
    assert message.hex() == (
        "445353457631203238206170706c69636174696f6e2f766e642e696e2d746f746f2b6a736f6e203433207b225f74797065"
        "223a2268747470733a2f2f696e2d746f746f2e696f2f53746174656d656e742f7631227d"
    )
    signature = key.sign(message)
    assert base64.b64encode(signature) == (
        b"2WAfaHm5jluo0w+0rk8uVkluELJYWjSmU9x7EUzx+AyteDGJ4/nqyJXfmAUVFIAoQafWm7AxBZNw5M9ixNHiCA=="
    )
    assert key.public.verify(signature, message)
    assert not key.public.verify(signature, pae("application/vnd.example.other+json", body))


def test_signed_round_trip_and_layout() -> None:
    key = SigningKey(bytes(32))
    unsigned = Signed("application/x-test", b"payload", key.key_id, b"")
    signed = Signed(unsigned.payload_type, unsigned.payload, key.key_id, key.sign(unsigned.signed_bytes()))
    data = signed.to_bytes()
    assert json.loads(data) == {
        "payloadType": "application/x-test",
        "payload": b64e(b"payload"),
        "signatures": [{"keyid": key.key_id, "sig": b64e(signed.signature)}],
    }
    assert data == canonical_json(json.loads(data))
    again = Signed.from_bytes(data, what="t")
    assert again == signed
    assert again.signed_bytes() == pae("application/x-test", b"payload")


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "x",
        {"payloadType": "t", "payload": ""},
        {"payloadType": "t", "payload": "", "signatures": []},
        {
            "payloadType": "t",
            "payload": "",
            "signatures": [{"keyid": "k", "sig": ""}, {"keyid": "k", "sig": ""}],
        },
        {"payloadType": "t", "payload": "", "signatures": [{"sig": ""}]},
        {"payloadType": "t", "payload": "", "signatures": [{"keyid": 1, "sig": ""}]},
        {"payloadType": "t", "payload": "", "signatures": [{"keyid": "k", "sig": "", "x": 1}]},
        {"payloadType": "t", "payload": "", "signatures": ["sig"]},
        {"payloadType": 7, "payload": "", "signatures": [{"keyid": "k", "sig": ""}]},
        {"payloadType": "t", "payload": "aGk=", "signatures": [{"keyid": "k", "sig": ""}]},
        {"payloadType": "t", "payload": 5, "signatures": [{"keyid": "k", "sig": ""}]},
        {"payloadType": "t", "payload": "", "signatures": [{"keyid": "k", "sig": ""}], "extra": 1},
    ],
)
def test_malformed_dsse_envelopes_are_refused(obj: object) -> None:
    with pytest.raises(EncodingError) as exc:
        Signed.from_json(obj, what="t")
    assert exc.value.code == "encoding.malformed"


# --- base64url ------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"f", b"fo", b"foo", b"foob", bytes(range(256))])
def test_b64_round_trip_is_unpadded_url_safe(data: bytes) -> None:
    text = b64e(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64d(text, what="t") == data


def test_b64_uses_the_url_safe_alphabet() -> None:
    assert b64e(b"\xfb\xff\xbf") == "-_-_"


@pytest.mark.parametrize(
    "text",
    [
        "aGk=",  # padding
        "aGk==",
        "+/+/",  # standard alphabet
        "aG k",  # whitespace
        "aGk\n",
        "aGl",  # non-zero unused bits (canonical form is "aGk")
        "a",  # impossible length
        "aGk!",
        "aGkё",  # non-ASCII
    ],
)
def test_b64_decoding_is_strict(text: str) -> None:
    with pytest.raises(EncodingError):
        b64d(text, what="t")


@pytest.mark.parametrize("value", [None, 5, b"aGk", ["aGk"]])
def test_b64_refuses_non_strings(value: object) -> None:
    with pytest.raises(EncodingError):
        b64d(value, what="t")


# --- JSON ----------------------------------------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert (
        canonical_json({"b": 1, "a": [1, "ё"], "c": {"z": None, "y": True}})
        == '{"a":[1,"ё"],"b":1,"c":{"y":true,"z":null}}'.encode()
    )


def test_canonical_json_escapes_only_what_json_requires() -> None:
    assert canonical_json(['"\\\n\t\x01\x7fé€😀']) == b'["\\"\\\\\\n\\t\\u0001\x7f' + "é€😀".encode() + b'"]'


def test_canonical_json_refuses_nan() -> None:
    with pytest.raises(ValueError):
        canonical_json(float("nan"))


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"a":2}',
        b'{"x":{"a":1,"a":1}}',
        b'[{"k":1,"k":1}]',
    ],
)
def test_duplicate_json_keys_are_refused(data: bytes) -> None:
    with pytest.raises(EncodingError) as exc:
        parse_json(data, what="t")
    assert "duplicate" in exc.value.message


@pytest.mark.parametrize("data", [b"NaN", b"[Infinity]", b'{"a":-Infinity}'])
def test_non_finite_numbers_are_refused(data: bytes) -> None:
    with pytest.raises(EncodingError):
        parse_json(data, what="t")


@pytest.mark.parametrize("data", [b"\xff", b'"\xc3"', b"", b"{", b"[1,]", b"{'a':1}", b"[" * 100000])
def test_invalid_json_is_refused_with_a_code(data: bytes) -> None:
    with pytest.raises(EncodingError) as exc:
        parse_json(data, what="t")
    assert exc.value.code == "encoding.malformed"


def test_error_messages_name_the_structure() -> None:
    with pytest.raises(EncodingError) as exc:
        parse_json(b'{"a":1,"a":2}', what="envelope header")
    assert str(exc.value).startswith("encoding.malformed: envelope header")


# --- JSON through orjson: the same bytes and values as the standard library -------------------
# ``canonical_json`` and ``parse_json`` take orjson's path where it gives exactly what Python's ``json``
# gives (``protocol._encoding``). The references below are the standard library's, as they were before.


def _reference_canonical(value: object) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _reference_parse(data: bytes) -> object:
    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise EncodingError("duplicate key")
        return dict(pairs)

    def no_constants(name: str) -> object:
        raise EncodingError(f"{name}")

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EncodingError("not valid JSON") from None


def _same(a: object, b: object) -> bool:
    """Equal and of the same types all the way down (``1 == 1.0 == True`` in Python; not here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, (list, tuple)):
        pairs = zip(a, b, strict=True)  # type: ignore[call-overload]
        return len(a) == len(b) and all(_same(x, y) for x, y in pairs)  # type: ignore[arg-type]
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


_texts = st.text(alphabet=st.characters(codec=None), max_size=12)  # any code point, lone surrogates too
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | _texts
    | st.sampled_from(["ё", "Ж", "a", "A", "é", "😀", "\x7f", "\u2028", "", "\x00"])
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(_texts, inner, max_size=4)
    ),
    max_leaves=20,
)


def _outcome(function: Callable[[], object]) -> tuple[str, object]:
    try:
        return "value", function()
    except Exception as exc:  # the kind of error is what is compared
        return "error", type(exc)


@given(_values)
@settings(max_examples=400, deadline=None)
def test_canonical_json_writes_what_the_standard_library_writes(value: object) -> None:
    assert _outcome(lambda: canonical_json(value)) == _outcome(lambda: _reference_canonical(value))


@given(_values)
@settings(max_examples=300, deadline=None)
def test_compact_json_writes_what_the_standard_library_writes(value: object) -> None:
    def reference() -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")

    assert _outcome(lambda: compact_json(value)) == _outcome(reference)


@pytest.mark.parametrize(
    "value",
    [
        # floats (orjson writes 1e-7 and NaN as null), integers at and past 64 bits, subclasses, odd keys:
        1e-07,
        1e-05,
        1e16,
        1e22,
        1.5e300,
        5e-324,
        -0.0,
        0.1,
        float("inf"),
        float("nan"),
        2**64,
        -(2**63) - 1,
        2**64 - 1,
        -(2**63),
        True,
        [True, 1],
        {"b": 1, "a": 2, "ё": 3, "z": 4, "Z": 5, "é": 6, "😀": 7, "\uffff": 8},
        ("t", 1),
        {1: "int key"},
        {"a": "\ud800"},
        json.loads("[" * 80 + '"deep"' + "]" * 80),
    ],
)
def test_canonical_json_of_values_the_two_write_differently_is_the_standard_librarys(value: object) -> None:
    assert _outcome(lambda: canonical_json(value)) == _outcome(lambda: _reference_canonical(value))


def test_canonical_json_refuses_what_the_standard_library_refuses() -> None:
    import enum
    import uuid
    from datetime import UTC, datetime

    class Colour(enum.Enum):
        RED = "red"

    for value in (datetime.now(UTC), uuid.uuid4(), Colour.RED, {"a": b"bytes"}, Signed("t", b"", "k", b"")):
        with pytest.raises(TypeError):
            canonical_json(value)


def test_canonical_json_of_str_and_int_subclasses_is_the_standard_librarys() -> None:
    import enum

    class Level(enum.IntEnum):
        HIGH = 3

    class Name(str):
        pass

    value = {"level": Level.HIGH, "name": Name("x"), "d": type("D", (dict,), {})(a=1)}
    assert canonical_json(value) == _reference_canonical(value) == b'{"d":{"a":1},"level":3,"name":"x"}'


@given(_values)
@settings(max_examples=300, deadline=None)
def test_parse_json_of_canonical_json_reads_what_the_standard_library_reads(value: object) -> None:
    try:
        data = _reference_canonical(value)
    except (ValueError, TypeError, UnicodeEncodeError):
        return
    ours, theirs = _outcome(lambda: parse_json(data, what="t")), _outcome(lambda: _reference_parse(data))
    assert ours[0] == theirs[0]
    assert _same(ours[1], theirs[1]) if ours[0] == "value" else ours[1] is theirs[1]


_json_texts = st.one_of(
    _values.map(lambda v: json.dumps(v, ensure_ascii=False, allow_nan=True)),  # spaces, NaN, any order
    _values.map(lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True)),  # \u escapes
    st.builds(
        lambda k, v, w: f'{{"{k}":{v},"{k}":{w}}}',
        st.sampled_from(["a", "ё", "z"]),  # a key twice
        st.sampled_from(["1", '"x"', "null"]),
        st.sampled_from(["1", '"y"', "[]"]),
    ),
    st.text(alphabet='{}[]",:0123456789.eE+-tfnrulsaё\\u ', max_size=30),
)


@given(st.one_of(_json_texts.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=30)))
@settings(max_examples=600, deadline=None)
def test_parse_json_of_any_bytes_reads_or_refuses_as_the_standard_library(data: bytes) -> None:
    ours, theirs = _outcome(lambda: parse_json(data, what="t")), _outcome(lambda: _reference_parse(data))
    assert ours[0] == theirs[0], (data, ours, theirs)
    if ours[0] == "value":
        assert _same(ours[1], theirs[1])
    else:
        assert ours[1] is EncodingError


@given(
    st.one_of(
        _json_texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.binary(max_size=30),
        _json_texts.map(lambda t: t.encode("utf-16", "surrogatepass")),
        _json_texts.map(lambda t: b"\xef\xbb\xbf" + t.encode("utf-8", "surrogatepass")),
    )
)
@settings(max_examples=600, deadline=None)
def test_read_json_reads_or_refuses_as_json_loads(data: bytes) -> None:
    ours, theirs = _outcome(lambda: read_json(data)), _outcome(lambda: json.loads(data))
    assert ours[0] == theirs[0], (data, ours, theirs)
    assert _same(ours[1], theirs[1]) if ours[0] == "value" else ours[1] is theirs[1]


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"b":2,"a":3}',
        b"18446744073709551616",
        b"[1e-7, NaN]",
        memoryview(b'{"a":1}'),
        bytearray(b'{"a":1}'),
        '{"a":1}',  # (orjson reads a memoryview; json.loads not)
    ],
)
def test_read_json_of_what_orjson_reads_otherwise_is_json_loads(data: bytes) -> None:
    ours, theirs = _outcome(lambda: read_json(data)), _outcome(lambda: json.loads(data))
    assert ours[0] == theirs[0]
    assert _same(ours[1], theirs[1]) if ours[0] == "value" else ours[1] is theirs[1]


@pytest.mark.parametrize("data", [b"[" * 5000, b"[" * 100_000, bytearray(b"[" * 5000)])
def test_read_json_refuses_json_nested_deeper_than_the_parser_goes_as_not_json(data: bytes) -> None:
    """``json.loads`` raises ``RecursionError`` there; ``read_json`` a ``ValueError``, as for anything else
    it cannot read (its callers catch that one)."""
    with pytest.raises(RecursionError):
        json.loads(data)
    with pytest.raises(ValueError, match="nested deeper"):
        read_json(data)


@pytest.mark.parametrize(
    "data",
    [
        # canonical JSON, but for the key repeated:
        b'{"a":1,"a":1}',
        b'{"a":{"b":2,"b":2}}',
        b'[{"\xd1\x91":null,"\xd1\x91":null}]',
    ],
)
def test_a_key_repeated_with_the_same_value_in_canonical_json_is_refused(data: bytes) -> None:
    with pytest.raises(EncodingError, match="duplicate"):
        parse_json(data, what="t")


@pytest.mark.parametrize(
    "data, value",
    [
        (b"18446744073709551616", 2**64),
        (b"-9223372036854775809", -(2**63) - 1),
        (b"[1e-07]", [1e-07]),
        (b"[1e-7]", [1e-07]),
        (b"-0", 0),
        (b"[-0.0]", [-0.0]),
        (b'"\\ud83d\\ude00"', "😀"),
        # read by orjson, but nested too deep for it to write back:
        (b"[" * 300 + b"]" * 300, json.loads(b"[" * 300 + b"]" * 300)),
    ],
)
def test_parse_json_reads_numbers_and_escapes_as_python_does(data: bytes, value: object) -> None:
    assert _same(parse_json(data, what="t"), value)


def test_signed_structures_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A document's JSON, a DSSE envelope and their bytes go through orjson, not the standard library
    (which would be ten times slower: ``bench/bench_protocol.py``)."""
    import protocol._encoding as encoding

    def refused(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("the standard library's path was taken")

    monkeypatch.setattr(encoding, "json", SimpleNamespace(dumps=refused, loads=refused))
    monkeypatch.setattr(encoding, "_parse_json_stdlib", refused)
    document = {
        "kind": "request",
        "id": "0b7e",
        "content": "Просим предоставить сведения.",
        "urgent": False,
        "thread_id": None,
        "attachments": [{"name": "a.pdf", "size": 5242880, "sha256": "ab" * 32}],
    }
    signed = Signed("application/vnd.prolink.document+json", canonical_json(document), "key", b"\x01" * 64)
    assert parse_json(signed.to_bytes(), what="t") == signed.to_json()
    assert parse_json(signed.payload, what="t") == document
    assert read_json(compact_json(document)) == document
    answer = {"results": [{"http_status": 200, "receipt": signed.to_json()}]}
    assert read_json(compact_json(answer)) == answer

"""Byte-level encodings: DSSE PAE, strict base64url, canonical JSON, strict JSON parsing."""

from __future__ import annotations

import base64
import json

import pytest

from protocol import EncodingError, Signed, SigningKey, b64d, b64e, canonical_json, pae, parse_json

# --- DSSE (https://github.com/secure-systems-lab/dsse, protocol.md) -----------------------


def test_pae_matches_the_dsse_spec_example() -> None:
    """protocol.md, "Test Vectors": payloadType http://example.com/HelloWorld, body "hello world"."""
    assert pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_pae_lengths_are_byte_lengths_of_utf8() -> None:
    assert pae("application/vnd.exämple+json", b"{}") == \
        b"DSSEv1 29 application/vnd.ex\xc3\xa4mple+json 2 {}"
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
        "223a2268747470733a2f2f696e2d746f746f2e696f2f53746174656d656e742f7631227d")
    signature = key.sign(message)
    assert base64.b64encode(signature) == (
        b"2WAfaHm5jluo0w+0rk8uVkluELJYWjSmU9x7EUzx+AyteDGJ4/nqyJXfmAUVFIAoQafWm7AxBZNw5M9ixNHiCA==")
    assert key.public.verify(signature, message)
    assert not key.public.verify(signature, pae("application/vnd.example.other+json", body))


def test_signed_round_trip_and_layout() -> None:
    key = SigningKey(bytes(32))
    unsigned = Signed("application/x-test", b"payload", key.key_id, b"")
    signed = Signed(unsigned.payload_type, unsigned.payload, key.key_id, key.sign(unsigned.signed_bytes()))
    data = signed.to_bytes()
    assert json.loads(data) == {"payloadType": "application/x-test", "payload": b64e(b"payload"),
                                "signatures": [{"keyid": key.key_id, "sig": b64e(signed.signature)}]}
    assert data == canonical_json(json.loads(data))
    again = Signed.from_bytes(data, what="t")
    assert again == signed
    assert again.signed_bytes() == pae("application/x-test", b"payload")


@pytest.mark.parametrize("obj", [
    None, [], "x",
    {"payloadType": "t", "payload": ""},
    {"payloadType": "t", "payload": "", "signatures": []},
    {"payloadType": "t", "payload": "", "signatures": [{"keyid": "k", "sig": ""}, {"keyid": "k", "sig": ""}]},
    {"payloadType": "t", "payload": "", "signatures": [{"sig": ""}]},
    {"payloadType": "t", "payload": "", "signatures": [{"keyid": 1, "sig": ""}]},
    {"payloadType": "t", "payload": "", "signatures": [{"keyid": "k", "sig": "", "x": 1}]},
    {"payloadType": "t", "payload": "", "signatures": ["sig"]},
    {"payloadType": 7, "payload": "", "signatures": [{"keyid": "k", "sig": ""}]},
    {"payloadType": "t", "payload": "aGk=", "signatures": [{"keyid": "k", "sig": ""}]},
    {"payloadType": "t", "payload": 5, "signatures": [{"keyid": "k", "sig": ""}]},
    {"payloadType": "t", "payload": "", "signatures": [{"keyid": "k", "sig": ""}], "extra": 1},
])
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


@pytest.mark.parametrize("text", [
    "aGk=",        # padding
    "aGk==",
    "+/+/",        # standard alphabet
    "aG k",        # whitespace
    "aGk\n",
    "aGl",         # non-zero unused bits (canonical form is "aGk")
    "a",           # impossible length
    "aGk!",
    "aGkё",        # non-ASCII
])
def test_b64_decoding_is_strict(text: str) -> None:
    with pytest.raises(EncodingError):
        b64d(text, what="t")


@pytest.mark.parametrize("value", [None, 5, b"aGk", ["aGk"]])
def test_b64_refuses_non_strings(value: object) -> None:
    with pytest.raises(EncodingError):
        b64d(value, what="t")


# --- JSON ----------------------------------------------------------------------------------

def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": [1, "ё"], "c": {"z": None, "y": True}}) == \
        '{"a":[1,"ё"],"b":1,"c":{"y":true,"z":null}}'.encode()


def test_canonical_json_escapes_only_what_json_requires() -> None:
    assert canonical_json(['"\\\n\t\x01\x7fé€😀']) == b'["\\"\\\\\\n\\t\\u0001\x7f' + "é€😀".encode() + b'"]'


def test_canonical_json_refuses_nan() -> None:
    with pytest.raises(ValueError):
        canonical_json(float("nan"))


@pytest.mark.parametrize("data", [
    b'{"a":1,"a":2}',
    b'{"x":{"a":1,"a":1}}',
    b'[{"k":1,"k":1}]',
])
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

"""The Host and Origin rules (api_spec H0, H2) as a pure function of headers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from halo_client.serving.access import AccessPolicy, host_name


@pytest.mark.parametrize(("header", "name"), [
    ("localhost:5001", "localhost"), ("LOCALHOST", "localhost"), ("[::1]:5001", "::1"), ("::1", "::1"),
    ("127.0.0.1:80", "127.0.0.1"), ("Example.COM.:8080", "example.com"), ("", ""),
])
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def test_default_policy() -> None:
    policy = AccessPolicy()
    for ok in (None, "localhost:5001", "a.localhost", "127.0.0.1:5001", "192.168.1.20:5001", "[::1]:5001",
               "[fe80::1]"):
        assert policy.host_allowed(ok), ok
    for bad in ("evil.example:5001", "localhost.evil.example", "", ":5001", "127.0.0.1.nip.io"):
        assert not policy.host_allowed(bad), bad


def test_allowed_names() -> None:
    policy = AccessPolicy(allowed_hosts=["Kobold.Lan"], allowed_origins=["https://proxy.example/"],
                          bind_host="myhost")
    for ok in ("kobold.lan:5001", "proxy.example", "myhost:5001"):
        assert policy.host_allowed(ok), ok
    assert not policy.host_allowed("other.lan")
    assert policy.origin_allowed("https://proxy.example", "localhost:5001")


def test_origin_rule() -> None:
    policy = AccessPolicy()
    assert policy.origin_allowed(None, "localhost:5001")
    assert policy.origin_allowed("http://localhost:5001", "localhost:5001")
    assert not policy.origin_allowed("http://localhost:5002", "localhost:5001")
    assert not policy.origin_allowed("https://evil.example", "localhost:5001")
    assert not policy.origin_allowed("null", "localhost:5001")
    assert not policy.origin_allowed("http://localhost:5001", None)


@given(st.text(alphabet=st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=20))
def test_any_plain_name_needs_allowing(label: str) -> None:
    name = f"{label}.example"
    assert not AccessPolicy().host_allowed(f"{name}:5001")
    assert AccessPolicy(allowed_hosts=[name]).host_allowed(f"{name}:5001")

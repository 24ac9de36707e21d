"""The stream's frame parser, without sockets: any split of the byte stream parses the same."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_client.websocket_client import (
    DIRECT_THRESHOLD,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    Control,
    Failure,
    FrameParser,
    Message,
    accept_key,
    mask_frame,
)


def server_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, masked: bool = False) -> bytes:
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, mask_bit | n))
    elif n < 65536:
        head = bytes((b0, mask_bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mask_bit | 127)) + struct.pack("!Q", n)
    return head + (b"\0\0\0\0" if masked else b"") + payload


def run(parser: FrameParser, stream: bytes, cuts: list[int], in_place: bool) -> list[object]:
    """Feed `stream` split at `cuts`, either through feed() or the BufferedProtocol calls."""
    pieces, last = [], 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        pieces.append(stream[last:cut])
        last = cut
    for piece in pieces:
        if not in_place:
            parser.feed(piece)
            continue
        while piece:
            buf = parser.get_buffer()
            n = min(len(buf), len(piece))
            buf[:n] = piece[:n]
            parser.buffer_updated(n)
            piece = piece[n:]
    events: list[object] = []
    while parser.events:
        e = parser.events.popleft()
        events.append(Message(e.opcode, bytes(e.data)) if isinstance(e, Message) else e)
    return events


big = bytes(range(256)) * ((DIRECT_THRESHOLD * 3) // 256 + 1)

messages = st.lists(
    st.one_of(
        st.tuples(st.just(OP_TEXT), st.text(max_size=300).map(str.encode)),
        st.tuples(st.just(OP_BINARY), st.binary(max_size=300)),
        st.tuples(st.just(OP_BINARY), st.integers(0, len(big)).map(lambda n: big[:n])),
        st.tuples(st.just(OP_PING), st.binary(max_size=125)),
    ),
    min_size=1, max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(messages, st.lists(st.integers(0, 10**6), max_size=20), st.booleans(), st.booleans())
def test_any_split_parses_to_the_same_messages(
    sent: list[tuple[int, bytes]], cuts: list[int], in_place: bool, fragment: bool
) -> None:
    stream = b""
    for opcode, payload in sent:
        if fragment and opcode != OP_PING and len(payload) > 2:
            half = len(payload) // 2
            stream += server_frame(opcode, payload[:half], fin=False)
            stream += server_frame(OP_PING, b"between fragments")
            stream += server_frame(OP_CONT, payload[half:])
        else:
            stream += server_frame(opcode, payload)
    cuts = [c % (len(stream) + 1) for c in cuts]
    events = run(FrameParser(max_size=1 << 30), stream, cuts, in_place)
    got = [(e.opcode, e.data) for e in events if isinstance(e, Message)]
    assert got == [(op, p) for op, p in sent if op != OP_PING]
    assert not any(isinstance(e, Failure) for e in events)


@pytest.mark.parametrize(
    ("stream", "code"),
    [
        (server_frame(OP_TEXT, b"x", rsv=0x40), 1002),
        (server_frame(OP_TEXT, b"x", masked=True), 1002),
        (server_frame(0x3, b"x"), 1002),
        (server_frame(0xB, b"x"), 1002),
        (server_frame(OP_PING, b"x", fin=False), 1002),
        (server_frame(OP_PING, b"x" * 126), 1002),
        (server_frame(OP_CONT, b"x"), 1002),
        (server_frame(OP_TEXT, b"a", fin=False) + server_frame(OP_TEXT, b"b"), 1002),
        (server_frame(OP_TEXT, b"\xff\xfe"), 1007),
        (server_frame(OP_BINARY, b"x" * 101), 1009),
        (server_frame(OP_BINARY, b"x" * 60, fin=False) + server_frame(OP_CONT, b"x" * 60), 1009),
    ],
)
def test_protocol_violations_fail_with_the_right_code(stream: bytes, code: int) -> None:
    parser = FrameParser(max_size=100)
    events = run(parser, stream, [], in_place=False)
    assert isinstance(events[-1], Failure) and events[-1].code == code
    parser.feed(server_frame(OP_TEXT, b"ignored after failure"))
    assert not parser.events


def test_oversized_length_is_refused_before_the_payload_arrives() -> None:
    parser = FrameParser(max_size=1000)
    parser.feed(bytes((0x82, 127)) + struct.pack("!Q", 2**40))
    assert parser.events and isinstance(parser.events[0], Failure) and parser.events[0].code == 1009


def test_large_payloads_are_received_in_place() -> None:
    parser = FrameParser(max_size=1 << 30)
    payload = big[: DIRECT_THRESHOLD * 2]
    stream = server_frame(OP_BINARY, payload)
    parser.feed(stream[:100])
    buf = parser.get_buffer()
    assert len(buf) == len(stream) - 100  # the rest of the payload, exactly
    buf[:] = stream[100:]
    parser.buffer_updated(len(buf))
    (message,) = parser.events
    assert isinstance(message, Message) and bytes(message.data) == payload


def test_control_frames_are_reported() -> None:
    parser = FrameParser(max_size=100)
    parser.feed(server_frame(OP_PING, b"hi") + server_frame(OP_CLOSE, struct.pack("!H", 1000)))
    assert list(parser.events) == [Control(OP_PING, b"hi"), Control(OP_CLOSE, b"\x03\xe8")]


@given(st.binary(max_size=70000), st.sampled_from([OP_TEXT, OP_BINARY, OP_CLOSE]))
@settings(max_examples=100, deadline=None)
def test_client_frames_are_masked_correctly(payload: bytes, opcode: int) -> None:
    frame = mask_frame(opcode, payload, mask=b"\x01\x02\x03\x04")
    assert frame[0] == 0x80 | opcode and frame[1] & 0x80
    n = frame[1] & 0x7F
    offset = 2 + {126: 2, 127: 8}.get(n, 0)
    key = frame[offset : offset + 4]
    body = frame[offset + 4 :]
    assert bytes(b ^ key[i % 4] for i, b in enumerate(body)) == payload


def test_accept_key_matches_rfc_6455_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

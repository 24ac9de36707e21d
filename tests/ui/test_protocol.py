"""The workbench's wire format: commands are validated, the binary update reads back exactly."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from halo_client.conversation.state import ConversationState
from halo_client.ui import protocol


def test_a_levels_update_reads_back_without_a_copy() -> None:
    brightness = np.array([0.5, 2.25, 1e-7], np.float32)
    bucket = np.array([0, 63, 12], np.uint8)
    message = protocol.encode_levels(7, brightness, bucket, newest=41, sent_ms=1234.5)
    assert len(message) == protocol.HEADER_SIZE + 5 * 3 and message[:4] == b"HWLV"
    epoch, newest, sent, got, got_bucket = protocol.decode_levels(message)
    assert (epoch, newest, sent) == (7, 41, 1234.5)
    np.testing.assert_array_equal(got, brightness)
    np.testing.assert_array_equal(got_bucket, bucket)
    with pytest.raises(ValueError):
        protocol.decode_levels(message[:-1])
    with pytest.raises(ValueError):
        protocol.encode_levels(1, brightness, bucket[:2])


def test_commands_are_checked_like_the_contract() -> None:
    command = protocol.COMMAND.validate_json('{"type": "inspect", "position": 3, "layer": 1}')
    assert isinstance(command, protocol.Inspect) and command.head is None and command.scale == "log"
    for bad in ('{"type": "send", "text": ""}', '{"type": "nope"}', '{"type": "stop", "x": 1}',
                '{"type": "export", "format": "pdf"}', "[]"):
        with pytest.raises(pydantic.ValidationError):
            protocol.COMMAND.validate_json(bad)


def test_a_character_split_over_tokens_is_drawn_by_the_token_that_completes_it() -> None:
    smile = "😀".encode()
    assert protocol.display_texts([b"a", smile[:2], smile[2:], b"b"]) == ["a", "", "😀", "b"]
    assert protocol.display_texts([b"x", smile[:3]]) == ["x", "\ufffd"]  # cut off at the end
    assert protocol.piece_label(smile[:2]) == "\\xf0\\x9f"
    assert protocol.piece_label("é".encode()) == "é"
    assert protocol.piece_label(b"a\\\xff") == "a\\x5c\\xff"


def test_rows_carry_what_the_page_draws() -> None:
    state = ConversationState()
    state.add_message("user", [(5, b"Hi"), (6, b".")], [(1, b"<s>")], [(2, b"</s>")])
    rows = protocol.rows(state, np.arange(4, dtype=np.int64), ["<s>", "Hi", ".", "</s>"])
    assert rows["position"] == [0, 1, 2, 3] and rows["template"] == [1, 0, 0, 1]
    assert rows["role"] == ["user"] * 4 and rows["text"][1] == "Hi" and rows["deleted"] == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        protocol.rows(state, np.arange(4, dtype=np.int64), ["too few"])

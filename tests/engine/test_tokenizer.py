"""The byte tokenizer: exact round trips, no forged specials, streaming without broken characters."""

from __future__ import annotations

import pytest

from thaw.engine.tokenizer import EOS, ByteTokenizer, Detokenizer
from thaw.errors import ConfigError

TEXTS = ["", "hello", "naïve café — 東京 🧊", "<|endoftext|> is just text here", "\x00\n\t"]


@pytest.mark.parametrize("text", TEXTS)
def test_text_round_trips(text: str) -> None:
    tok = ByteTokenizer(512)
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)  # a prompt cannot produce a special id, not even by spelling one
    assert tok.decode(ids) == text


def test_decode_leaves_out_special_ids() -> None:
    tok = ByteTokenizer(512)
    assert tok.decode([*tok.encode("ab"), EOS, *tok.encode("c")]) == "abc"


def test_streamed_pieces_never_split_a_character() -> None:
    text = "ü東🧊!"
    detok = Detokenizer()
    pieces = [detok.push(i) for i in ByteTokenizer(512).encode(text)] + [detok.flush()]
    assert "".join(pieces) == text
    assert "\ufffd" not in "".join(pieces)
    assert pieces[:2] == ["", "ü"]  # the first byte of ü alone yields nothing yet


def test_a_vocabulary_too_small_for_the_bytes_and_specials_is_refused() -> None:
    with pytest.raises(ConfigError, match="vocab_size"):
        ByteTokenizer(258)

"""A byte-level tokenizer: ids 0-255 are the bytes of UTF-8 text, a few ids above are special.

No vocabulary has to be downloaded, and every string round-trips exactly. The model's
vocabulary is larger (151,936 for the Qwen3 shapes); ids past the specials are never
produced, because the sampler only considers the first ``tokenizer.size`` logits.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

from thaw.errors import ConfigError

EOS = 256  # <|endoftext|>: ends a completion unless the request asks to ignore it
IM_START = 257
IM_END = 258
SPECIALS = {EOS: "<|endoftext|>", IM_START: "<|im_start|>", IM_END: "<|im_end|>"}


class ByteTokenizer:
    """Text ↔ ids. Special tokens are never produced by ``encode`` (a prompt cannot forge an EOS)."""

    eos_id = EOS

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < self.size:
            raise ConfigError("vocab_size", f"{vocab_size} is smaller than the byte tokenizer's {self.size} ids")
        self.vocab_size = vocab_size

    @property
    def size(self) -> int:
        """How many ids the tokenizer uses (bytes + specials); the sampler never looks past this."""
        return 256 + len(SPECIALS)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the byte ids; special ids are left out, invalid UTF-8 becomes U+FFFD."""
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def check(self, ids: list[int]) -> None:
        """Refuse a prompt given as ids that are not the tokenizer's."""
        bad = [i for i in ids if not 0 <= i < self.size]
        if bad:
            raise ConfigError("prompt", f"token ids {bad[:5]} are outside the tokenizer's 0..{self.size - 1}")


class Detokenizer:
    """Turns a stream of ids into text pieces without splitting a multi-byte character."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if token_id >= 256:
            return ""
        return self._utf8.decode(bytes((token_id,)))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)

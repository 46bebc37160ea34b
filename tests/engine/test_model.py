"""The engine computes what Hugging Face's Qwen3 computes, through both of its paths.

The reference is ``transformers.Qwen3ForCausalLM`` loaded from the very checkpoint
directory the engine reads (config.json + safetensors), in fp32 on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from thaw.engine.config import get_config, replace
from thaw.engine.kv_cache import KVCache
from thaw.engine.model import DecodeInputs, Qwen3
from thaw.engine.weights import make_weights, read_config
from thaw.errors import ConfigError

ATOL = 1e-5


def _reference(path: Path) -> transformers.Qwen3ForCausalLM:
    return transformers.Qwen3ForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                         attn_implementation="eager").eval()


def _engine_model(path: Path) -> tuple[Qwen3, KVCache]:
    config = read_config(path)
    model = Qwen3.load(path, config, device=torch.device("cpu"), dtype=torch.float32, max_len=256)
    kv = KVCache(config, num_blocks=32, block_size=4, dtype=torch.float32, device=torch.device("cpu"))
    return model, kv


def _prompt(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny shape with untied and with tied embeddings (qwen3-0.6b ties them, qwen3-8b does not)."""
    config = replace(get_config("tiny"), tie_word_embeddings=request.param)
    path = tmp_path_factory.mktemp("hf") / "ckpt"
    make_weights(config, path, seed=7, device="cpu")
    return path


def test_prefill_logits_match_hf_at_every_position(checkpoint: Path) -> None:
    tokens = _prompt(37)
    with torch.no_grad():
        expected = _reference(checkpoint)(tokens[None]).logits[0]
    model, kv = _engine_model(checkpoint)
    # the blocks of the sequence are deliberately not contiguous
    blocks = torch.tensor([5, 2, 9, 7, 1, 11, 3, 8, 4, 6])
    positions = torch.arange(len(tokens))
    slots = blocks[positions // 4] * 4 + positions % 4
    with torch.inference_mode():
        got = model.prefill(tokens, positions, slots, kv, all_logits=True)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_paged_decode_matches_hf_token_by_token(checkpoint: Path) -> None:
    """Prefill a prefix, then decode the rest one token at a time through block tables: each step's
    logits equal HF's logits at that position of the whole sequence."""
    seqs = [_prompt(23, seed=1), _prompt(18, seed=2)]
    ref = _reference(checkpoint)
    with torch.no_grad():
        expected = [ref(s[None]).logits[0] for s in seqs]
    model, kv = _engine_model(checkpoint)
    tables = [torch.tensor([3, 10, 6, 1, 12, 8]), torch.tensor([7, 2, 11, 5, 9])]
    prefix = 9
    with torch.inference_mode():
        for s, table in zip(seqs, tables):
            pos = torch.arange(prefix)
            model.prefill(s[:prefix], pos, table[pos // 4] * 4 + pos % 4, kv)
        # decode both sequences together, as a batch of 2, while both have tokens left
        for p in range(prefix, min(map(len, seqs))):
            positions = torch.tensor([p, p])
            slots = torch.stack([t[p // 4] * 4 + p % 4 for t in tables])
            width = max(len(t) for t in tables)
            block_tables = torch.stack([torch.nn.functional.pad(t, (0, width - len(t))) for t in tables])
            logits = model.decode(torch.stack([s[p] for s in seqs]), positions, slots, kv,
                                  DecodeInputs(block_tables, positions + 1))
            for i in range(2):
                torch.testing.assert_close(logits[i], expected[i][p], atol=ATOL, rtol=0)


def test_a_checkpoint_that_misses_a_tensor_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((checkpoint / "config.json").read_text())
    tensors = load_file(checkpoint / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(ConfigError, match="does not fill"):
        _engine_model(broken)


def test_a_checkpoint_of_another_shape_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    make_weights(replace(read_config(checkpoint), intermediate_size=96), wrong, device="cpu")
    (wrong / "config.json").write_text((checkpoint / "config.json").read_text())  # lies about the shape
    with pytest.raises(ConfigError, match="shape"):
        _engine_model(wrong)

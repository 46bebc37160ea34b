"""Checkpoints on disk: HF layout, shards with an index, seeded values, all-or-nothing publishing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from thaw.engine.config import get_config
from thaw.engine.weights import INDEX_JSON, checkpoint_files, iter_tensors, make_weights, read_config
from thaw.errors import ConfigError

TINY = get_config("tiny")


def test_a_checkpoint_holds_every_tensor_of_the_config_in_bf16(tiny_weights: Path) -> None:
    tensors = dict(iter_tensors(tiny_weights))
    assert {n: tuple(t.shape) for n, t in tensors.items()} == TINY.tensor_shapes()
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert read_config(tiny_weights) == TINY
    with safe_open(tiny_weights / "model.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt"}  # what transformers' loader expects


def test_big_checkpoints_are_sharded_with_an_hf_index(tmp_path: Path, tiny_weights: Path) -> None:
    out = make_weights(TINY, tmp_path / "sharded", shard_bytes=64 * 1024, device="cpu")
    index = json.loads((out.path / INDEX_JSON).read_text())
    files = checkpoint_files(out.path)
    assert out.files == len(files) > 3
    assert set(index["weight_map"]) == set(TINY.tensor_shapes())
    assert index["metadata"]["total_size"] == TINY.weight_bytes() == out.bytes
    # sharding changes the files, not the values
    single = dict(iter_tensors(tiny_weights))
    for name, tensor in iter_tensors(out.path):
        assert torch.equal(tensor, single[name]), name


def test_values_follow_the_seed(tmp_path: Path, tiny_weights: Path) -> None:
    same = dict(iter_tensors(make_weights(TINY, tmp_path / "same", seed=0, device="cpu").path))
    other = dict(iter_tensors(make_weights(TINY, tmp_path / "other", seed=1, device="cpu").path))
    base = dict(iter_tensors(tiny_weights))
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(same[name], base[name])
    assert not torch.equal(other[name], base[name])
    assert 0.015 < base[name].float().std().item() < 0.025  # N(0, 0.02), like Qwen3's initializer_range


def test_a_non_empty_directory_is_kept_unless_forced(tmp_path: Path) -> None:
    dest = tmp_path / "w"
    dest.mkdir()
    (dest / "mine.txt").write_text("do not delete")
    with pytest.raises(ConfigError, match="not empty"):
        make_weights(TINY, dest, device="cpu")
    assert (dest / "mine.txt").exists()
    make_weights(TINY, dest, device="cpu", force=True)
    assert not (dest / "mine.txt").exists() and (dest / "config.json").exists()


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import thaw.engine.weights as weights

    calls = []

    def fail_on_second_shard(tensors, path, metadata=None):  # type: ignore[no-untyped-def]
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(tensors, path, metadata=metadata)

    real = weights.save_file
    monkeypatch.setattr(weights, "save_file", fail_on_second_shard)
    with pytest.raises(OSError, match="disk full"):
        make_weights(TINY, tmp_path / "w", shard_bytes=64 * 1024, device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_shard_is_named(tmp_path: Path) -> None:
    out = make_weights(TINY, tmp_path / "w", shard_bytes=64 * 1024, device="cpu")
    victim = checkpoint_files(out.path)[1]
    victim.unlink()
    with pytest.raises(ConfigError, match=victim.name):
        list(iter_tensors(out.path))


def test_a_directory_without_config_json_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="make-weights"):
        read_config(tmp_path)

"""The named configs have the published Qwen3 shapes, and config.json round-trips."""

from __future__ import annotations

import pytest

from thaw.engine.config import CONFIGS, ModelConfig, get_config
from thaw.errors import ConfigError

H200_BYTES = 141e9


@pytest.mark.parametrize(("name", "params"), [
    ("qwen3-0.6b", 596_049_920),  # Qwen/Qwen3-0.6B: 0.6B, tied embeddings
    ("qwen3-8b", 8_190_735_360),  # Qwen/Qwen3-8B: 8.2B
    ("qwen3-32b", 32_762_123_264),  # Qwen/Qwen3-32B: 32.8B
])
def test_parameter_counts_are_those_of_the_published_models(name: str, params: int) -> None:
    assert get_config(name).param_count() == params


def test_the_large_config_has_60_gb_of_weights_and_fits_an_h200_with_its_kv_cache() -> None:
    big = get_config("qwen3-32b")
    assert big.weight_bytes() >= 60e9
    kv_for_32k_tokens = 32 * 1024 * big.kv_bytes_per_token()
    assert big.weight_bytes() + kv_for_32k_tokens < 0.9 * H200_BYTES


def test_tiny_is_a_few_mb_at_most() -> None:
    assert get_config("tiny").weight_bytes() < 5e6


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_json_round_trips(name: str) -> None:
    assert ModelConfig.from_hf(CONFIGS[name].to_hf()) == CONFIGS[name]


@pytest.mark.parametrize(("change", "field"), [
    ({"model_type": "llama"}, "model_type"),
    ({"attention_bias": True}, "attention_bias"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ({"num_key_value_heads": 3}, "num_attention_heads"),
])
def test_unsupported_checkpoints_are_refused_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_hf(get_config("tiny").to_hf() | change)
    assert info.value.field == field


def test_an_unknown_config_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="qwen3-8b"):
        get_config("qwen3-9b")

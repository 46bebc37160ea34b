"""Model configurations: the Qwen3 shapes the engine serves, and their ``config.json``.

The shapes of ``qwen3-0.6b``, ``qwen3-8b`` and ``qwen3-32b`` are those of the
published Qwen3 checkpoints (Qwen/Qwen3-*/config.json); only the weights are random.
``qwen3-32b`` is the large one: ~65.5 GB of bf16 weights, which leaves ~60 GB of an
H200's 141 GB for the KV cache. ``tiny`` is for CPU tests.

``config.json`` is written in Hugging Face's format (``model_type: qwen3``) so that
``transformers.Qwen3ForCausalLM.from_pretrained(dir)`` loads the same checkpoint —
that is how the engine is checked against the reference implementation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from thaw.errors import ConfigError

#: bumped when the meaning of the ``thaw`` block in config.json changes
SCHEMA_VERSION = 1

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer of the Qwen3 architecture."""

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    max_position_embeddings: int = 40960
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    #: dtype of the weights on disk
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("num_attention_heads", f"{self.num_heads} is not a multiple of "
                              f"num_key_value_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError("head_dim", f"{self.head_dim} is odd; rotary embeddings need an even head_dim")
        if self.dtype not in _DTYPE_BYTES:
            raise ConfigError("torch_dtype", f"{self.dtype!r} is not one of {sorted(_DTYPE_BYTES)}")

    # -- sizes ---------------------------------------------------------------------------

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the checkpoint, by its Hugging Face name, in file order."""
        h, d = self.hidden_size, self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, h)}
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            shapes |= {
                p + "input_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (self.num_heads * d, h),
                p + "self_attn.k_proj.weight": (self.num_kv_heads * d, h),
                p + "self_attn.v_proj.weight": (self.num_kv_heads * d, h),
                p + "self_attn.o_proj.weight": (h, self.num_heads * d),
                p + "self_attn.q_norm.weight": (d,),
                p + "self_attn.k_norm.weight": (d,),
                p + "post_attention_layernorm.weight": (h,),
                p + "mlp.gate_proj.weight": (self.intermediate_size, h),
                p + "mlp.up_proj.weight": (self.intermediate_size, h),
                p + "mlp.down_proj.weight": (h, self.intermediate_size),
            }
        shapes["model.norm.weight"] = (h,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        return shapes

    def param_count(self) -> int:
        total = 0
        for shape in self.tensor_shapes().values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total

    def weight_bytes(self) -> int:
        return self.param_count() * _DTYPE_BYTES[self.dtype]

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV-cache bytes one token takes across all layers (K and V)."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * dtype_bytes

    # -- config.json -----------------------------------------------------------------------

    def to_hf(self) -> dict[str, Any]:
        """``config.json`` as Hugging Face writes it for Qwen3, plus a ``thaw`` block naming the config."""
        return {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "use_sliding_window": False,
            "torch_dtype": self.dtype,
            "thaw": {"schema": SCHEMA_VERSION, "config": self.name},
        }

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> ModelConfig:
        """Read a Qwen3 ``config.json``; refuses what this engine does not implement."""
        if raw.get("model_type") != "qwen3":
            raise ConfigError("model_type", f"{raw.get('model_type')!r}: the engine serves only qwen3 checkpoints")
        for key, unsupported in (("attention_bias", True), ("use_sliding_window", True)):
            if raw.get(key) == unsupported:
                raise ConfigError(key, f"{unsupported} is not supported by thaw's engine")
        if raw.get("hidden_act", "silu") != "silu":
            raise ConfigError("hidden_act", f"{raw['hidden_act']!r}: only silu is supported")
        if raw.get("rope_scaling"):
            raise ConfigError("rope_scaling", "scaled rotary embeddings are not supported")
        rope = raw.get("rope_parameters") or {}
        try:
            return cls(
                name=(raw.get("thaw") or {}).get("config", "custom"),
                vocab_size=int(raw["vocab_size"]),
                hidden_size=int(raw["hidden_size"]),
                intermediate_size=int(raw["intermediate_size"]),
                num_layers=int(raw["num_hidden_layers"]),
                num_heads=int(raw["num_attention_heads"]),
                num_kv_heads=int(raw.get("num_key_value_heads") or raw["num_attention_heads"]),
                head_dim=int(raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                max_position_embeddings=int(raw.get("max_position_embeddings", 40960)),
                rope_theta=float(raw.get("rope_theta", rope.get("rope_theta", 1_000_000.0))),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "bfloat16"),
            )
        except KeyError as exc:
            raise ConfigError(str(exc.args[0]), "missing from config.json") from exc


CONFIGS: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        # a few MB; 512 ids so that the byte tokenizer's 259 fit, GQA with 2 query heads per KV head
        ModelConfig("tiny", vocab_size=512, hidden_size=64, intermediate_size=160, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=False,
                    max_position_embeddings=2048),
        ModelConfig("qwen3-0.6b", vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_layers=28,
                    num_heads=16, num_kv_heads=8, head_dim=128, tie_word_embeddings=True),
        ModelConfig("qwen3-8b", vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_layers=36,
                    num_heads=32, num_kv_heads=8, head_dim=128, tie_word_embeddings=False),
        ModelConfig("qwen3-32b", vocab_size=151936, hidden_size=5120, intermediate_size=25600, num_layers=64,
                    num_heads=64, num_kv_heads=8, head_dim=128, tie_word_embeddings=False),
    )
}


def get_config(name: str) -> ModelConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ConfigError("config", f"unknown config {name!r}", hint=f"one of: {', '.join(CONFIGS)}") from None


def replace(config: ModelConfig, **changes: Any) -> ModelConfig:
    """A copy of ``config`` with some fields changed (e.g. an untied variant for a test)."""
    return dataclasses.replace(config, **changes)

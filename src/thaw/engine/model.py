"""The Qwen3 decoder: GQA attention with q/k RMSNorm and rotary embeddings, SwiGLU MLP.

It computes what ``transformers.Qwen3ForCausalLM`` computes (a CPU test holds it to
that), arranged the way a server needs it:

* every pass works on a flat batch of tokens ``[N, hidden]`` and writes each token's
  K and V into the paged cache at ``slots[N]`` (``block * block_size + offset``);
* ``prefill`` runs the prompt of one sequence with causal attention over itself;
* ``decode`` runs one token for each of B sequences, attending over their cached
  tokens through the block tables — with no host synchronisation and fixed shapes,
  so that it can be captured as a CUDA graph;
* q/k/v and gate/up are fused into one matrix each when the checkpoint is loaded
  (one matmul instead of three, as vLLM does); the checkpoint keeps HF's names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from thaw.engine.config import ModelConfig
from thaw.engine.kv_cache import KVCache
from thaw.errors import ConfigError


@dataclass
class DecodeInputs:
    """Where B single-token sequences read their context from (all tensors on the model's device)."""

    block_tables: torch.Tensor  # [B, M] int64: block ids of each sequence, padded with the null block
    context_lens: torch.Tensor  # [B] int64: tokens in each sequence's context, this step's included


def _param(*shape: int, like: Placement) -> nn.Parameter:
    # uninitialised: every parameter is filled from the checkpoint (nn.Linear's random init would cost
    # a kernel per tensor, and under the meta device it imports torch._refs: ~1 s of start-up)
    return nn.Parameter(torch.empty(shape, dtype=like.dtype, device=like.device), requires_grad=False)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, at: Placement) -> None:
        super().__init__()
        self.weight = _param(dim, like=at)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32, scale in the activation dtype — the order HF's Qwen3RMSNorm uses
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, c: ModelConfig, at: Placement) -> None:
        super().__init__()
        self.h, self.kvh, self.d = c.num_heads, c.num_kv_heads, c.head_dim
        self.qkv_proj = _param((self.h + 2 * self.kvh) * self.d, c.hidden_size, like=at)
        self.o_proj = _param(c.hidden_size, self.h * self.d, like=at)
        self.q_norm = RMSNorm(self.d, c.rms_norm_eps, at)
        self.k_norm = RMSNorm(self.d, c.rms_norm_eps, at)
        self.scale = self.d**-0.5

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        slots: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor],
        decode: DecodeInputs | None,
    ) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = F.linear(x, self.qkv_proj).split([self.h * self.d, self.kvh * self.d, self.kvh * self.d], dim=-1)
        q = _rotate(self.q_norm(q.view(n, self.h, self.d)), cos, sin)
        k = _rotate(self.k_norm(k.view(n, self.kvh, self.d)), cos, sin)
        v = v.view(n, self.kvh, self.d)
        k_cache, v_cache = kv
        k_cache.view(-1, self.kvh, self.d)[slots] = k
        v_cache.view(-1, self.kvh, self.d)[slots] = v
        if decode is None:
            out = self._causal(q, k, v)
        else:
            out = self._paged(q, k_cache, v_cache, decode)
        return F.linear(out.reshape(n, self.h * self.d), self.o_proj)

    def _causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Prefill of one sequence: its tokens attend causally to each other (the cache holds nothing older)."""
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0),
            is_causal=True, scale=self.scale, enable_gqa=True,
        )
        return out.squeeze(0).transpose(0, 1)

    def _paged(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, d: DecodeInputs) -> torch.Tensor:
        """Decode: each sequence's single query attends to its cached tokens, gathered through its block table.

        Query head ``g * kvh_groups + j`` uses KV head ``g`` (HF's ``repeat_kv``), so the
        queries are viewed as [B, KVH, groups, D] and multiplied against [B, KVH, L, D]
        without materialising repeated K/V.
        """
        b, m = d.block_tables.shape
        block = k_cache.shape[1]
        keys = k_cache[d.block_tables].view(b, m * block, self.kvh, self.d).transpose(1, 2)
        values = v_cache[d.block_tables].view(b, m * block, self.kvh, self.d).transpose(1, 2)
        q = q.view(b, self.kvh, self.h // self.kvh, self.d)
        scores = torch.matmul(q, keys.transpose(-1, -2)).float() * self.scale  # [B, KVH, G, L]
        visible = torch.arange(m * block, device=q.device) < d.context_lens[:, None]  # [B, L]
        scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(values.dtype)
        return torch.matmul(probs, values)  # [B, KVH, G, D] == [B, H, D]


class MLP(nn.Module):
    def __init__(self, c: ModelConfig, at: Placement) -> None:
        super().__init__()
        self.inter = c.intermediate_size
        self.gate_up_proj = _param(2 * self.inter, c.hidden_size, like=at)
        self.down_proj = _param(c.hidden_size, self.inter, like=at)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.gate_up_proj).split(self.inter, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_proj)


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig, at: Placement) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, at)
        self.self_attn = Attention(c, at)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, at)
        self.mlp = MLP(c, at)

    def forward(self, x, cos, sin, slots, kv, decode):  # type: ignore[no-untyped-def]
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, slots, kv, decode)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3(nn.Module):
    """The decoder with its embedding and LM head. Build it with :meth:`load`."""

    def __init__(self, config: ModelConfig, at: Placement) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = _param(config.vocab_size, config.hidden_size, like=at)
        self.layers = nn.ModuleList(DecoderLayer(config, at) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, at)
        self.lm_head = None if config.tie_word_embeddings else _param(config.vocab_size, config.hidden_size, like=at)
        self.cos = self.sin = torch.empty(0)

    @classmethod
    def load(cls, path: Path, config: ModelConfig, *, device: torch.device, dtype: torch.dtype,
             max_len: int) -> Qwen3:
        """Allocate the model on ``device`` (uninitialised) and fill it from the checkpoint in ``path``."""
        from thaw.engine import weights

        model = cls(config, Placement(device, dtype)).eval()
        model.fill(weights.iter_tensors(path))
        model.cos, model.sin = _rope_tables(config, max_len, device, dtype)
        return model

    @classmethod
    def over(cls, params: dict[str, torch.Tensor], config: ModelConfig, *, device: torch.device,
             dtype: torch.dtype, max_len: int) -> Qwen3:
        """A model whose parameters *are* the given tensors (no copy): e.g. weights mapped from thaw.gms.

        ``params`` names every parameter of this model's layout (fused q/k/v and gate/up included),
        each already of the right shape and dtype on ``device``.
        """
        model = cls(config, Placement(torch.device("meta"), dtype)).eval()  # no memory for the placeholders
        own = dict(model.named_parameters())
        if set(own) != set(params):
            missing, extra = sorted(set(own) - set(params)), sorted(set(params) - set(own))
            raise ConfigError("weights", f"the mapped weights do not fit the model: missing {missing[:3]}, "
                              f"unexpected {extra[:3]}")
        for name, tensor in params.items():
            if tuple(tensor.shape) != tuple(own[name].shape) or tensor.dtype != dtype:
                raise ConfigError("weights", f"{name} is {tuple(tensor.shape)} {tensor.dtype}, the model needs "
                                  f"{tuple(own[name].shape)} {dtype}")
            owner, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, leaf, nn.Parameter(tensor, requires_grad=False))
        model.cos, model.sin = _rope_tables(config, max_len, device, dtype)
        return model

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.dtype

    def fill(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors (HF names) into the parameters; every parameter must be covered exactly."""
        params = dict(self.named_parameters())
        loaded = dict.fromkeys(params, 0)
        for name, tensor in tensors:
            param_name, rows = self._destination(name)
            if param_name not in params:
                raise ConfigError("weights", f"unexpected tensor {name!r} in the checkpoint")
            dest = params[param_name].data
            if rows is not None:
                dest = dest[rows[0]:rows[1]]
            if dest.shape != tensor.shape:
                raise ConfigError("weights", f"{name} has shape {tuple(tensor.shape)}, "
                                  f"the config says {tuple(dest.shape)}")
            dest.copy_(tensor)
            loaded[param_name] += tensor.numel()
        incomplete = [n for n, p in params.items() if loaded[n] != p.numel()]
        if incomplete:
            raise ConfigError("weights", f"the checkpoint does not fill {len(incomplete)} parameters, "
                              f"e.g. {incomplete[:3]}")

    def destination(self, name: str) -> tuple[str, tuple[int, int] | None]:
        """Where HF tensor ``name`` goes: (parameter name, row range within it or None)."""
        return self._destination(name)

    def _destination(self, name: str) -> tuple[str, tuple[int, int] | None]:
        """Map an HF tensor name to (parameter, row range) in this model's layout.

        Matrices are bare parameters here (``layers.3.mlp.down_proj``), norms keep
        ``.weight``, and q/k/v and gate/up share one fused matrix each.
        """
        c = self.config
        q, kv, inter = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size
        fused = {
            "self_attn.q_proj": ("self_attn.qkv_proj", (0, q)),
            "self_attn.k_proj": ("self_attn.qkv_proj", (q, q + kv)),
            "self_attn.v_proj": ("self_attn.qkv_proj", (q + kv, q + 2 * kv)),
            "mlp.gate_proj": ("mlp.gate_up_proj", (0, inter)),
            "mlp.up_proj": ("mlp.gate_up_proj", (inter, 2 * inter)),
        }
        name = name.removeprefix("model.")
        if "norm." in name:
            return name, None
        name = name.removesuffix(".weight")
        if name.startswith("layers."):
            _, i, rest = name.split(".", 2)
            if rest in fused:
                target, rows = fused[rest]
                return f"layers.{i}.{target}", rows
        return name, None

    # -- forward passes -------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, kv: KVCache,
                decode: DecodeInputs | None = None) -> torch.Tensor:
        """Hidden states [N, hidden] after the final norm; K/V of every token written at ``slots``."""
        x = F.embedding(tokens, self.embed_tokens)
        cos, sin = self.cos[positions], self.sin[positions]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, slots, kv.layer(i), decode)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.embed_tokens if self.lm_head is None else self.lm_head)

    def prefill(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, kv: KVCache,
                *, all_logits: bool = False) -> torch.Tensor:
        """Run one sequence's new tokens; logits of the last token [1, V] (or of all, for tests)."""
        hidden = self(tokens, positions, slots, kv)
        return self.logits(hidden if all_logits else hidden[-1:])

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, kv: KVCache,
               inputs: DecodeInputs) -> torch.Tensor:
        """One token for each of B sequences; logits [B, V]. Capturable as a CUDA graph."""
        return self.logits(self(tokens, positions, slots, kv, inputs))


def _rope_tables(c: ModelConfig, max_len: int, device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for positions 0..max_len-1, computed in fp32 as HF does, then cast to the activation dtype."""
    inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32, device=device) / c.head_dim))
    freqs = torch.arange(max_len, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the "rotate half" layout of Qwen/Llama checkpoints. x: [N, heads, D], cos/sin: [N, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]

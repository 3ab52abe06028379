"""LLaMA modules (parameter holders with transformers' names) and :class:`LlamaForCausalLM`, whose
forward and decode loop run in Rust (libtorch) on the module's own parameters."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import _core
from .._bind import RustBound, check_device, check_float_dtype, check_int
from ..exceptions import CheckpointError, ConfigError, DTypeError, ShapeError
from .config import LlamaConfig, PathLike


class RMSNorm(nn.Module):
    """LLaMA's RMSNorm (float32 statistics), with transformers' ``weight`` name."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, **kw: Any) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, **kw))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * xf.to(dtype)


class LlamaAttention(nn.Module):
    def __init__(self, c: LlamaConfig, **kw: Any) -> None:
        super().__init__()
        hd, nh, nkv = c.head_dim, c.num_attention_heads, c.num_key_value_heads
        assert hd is not None and nkv is not None
        self.q_proj = nn.Linear(c.hidden_size, nh * hd, bias=c.attention_bias, **kw)
        self.k_proj = nn.Linear(c.hidden_size, nkv * hd, bias=c.attention_bias, **kw)
        self.v_proj = nn.Linear(c.hidden_size, nkv * hd, bias=c.attention_bias, **kw)
        self.o_proj = nn.Linear(nh * hd, c.hidden_size, bias=c.attention_bias, **kw)


class LlamaMLP(nn.Module):
    def __init__(self, c: LlamaConfig, **kw: Any) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias, **kw)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias, **kw)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias, **kw)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, c: LlamaConfig, **kw: Any) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(c, **kw)
        self.mlp = LlamaMLP(c, **kw)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, **kw)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, **kw)


class LlamaRotaryEmbedding(nn.Module):
    """Holds ``inv_freq`` (non-persistent buffer, as transformers) so it follows ``.to(device)``."""

    def __init__(self, c: LlamaConfig, device: Any = None) -> None:
        super().__init__()
        inv = _core.llama_rope_inv_freq(c.to_json())
        if device is not None and torch.device(device).type != "meta":
            inv = inv.to(device)
        self.register_buffer("inv_freq", inv, persistent=False)


class LlamaModel(nn.Module):
    def __init__(self, c: LlamaConfig, **kw: Any) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, **kw)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(c, **kw) for _ in range(c.num_hidden_layers)]
        )
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, **kw)
        self.rotary_emb = LlamaRotaryEmbedding(c, kw.get("device"))


@dataclass
class CausalLMOutput:
    """``logits [B, T, V]`` (None when the loss was computed in chunks without them); ``loss``
    when labels were given; ``hidden_states``: the embeddings, each layer's output and the
    final-normed last layer (transformers' convention)."""

    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def _check_mask(mask: Any) -> None:
    """An attention mask is a bool, integer or float tensor of 0s and 1s (1 = attend)."""
    if not isinstance(mask, torch.Tensor):
        return  # the Rust bridge names non-tensors
    if mask.is_complex():
        raise DTypeError(
            f"attention_mask: expected a bool, integer or float tensor, got {mask.dtype}"
        )
    if mask.dtype != torch.bool and not mask.is_meta and mask.numel():
        if bool(((mask != 0) & (mask != 1)).any()):
            bad = mask[(mask != 0) & (mask != 1)].flatten()[:3].tolist()
            raise ShapeError(
                f"attention_mask: expected 0 (padding) or 1 (token) entries, got values {bad}"
            )


class LlamaForCausalLM(RustBound):
    """A LLaMA decoder whose forward and generation run in Rust.

    Parameters are ordinary ``nn.Parameter``s with transformers' names
    (``model.layers.{i}.self_attn.q_proj.weight``, ...), so optimizers, ``state_dict``,
    ``.to()`` and DDP work as for any module.
    """

    def __init__(
        self, config: LlamaConfig, device: Any = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = LlamaConfig.from_dict(config)
        if not isinstance(config, LlamaConfig):
            raise ConfigError(
                f"config: expected a LlamaConfig (or a dict of its fields), got "
                f"{type(config).__name__}"
            )
        check_device(device)
        check_float_dtype(dtype)
        self.config = config
        kw = {"device": device, "dtype": dtype}
        self.model = LlamaModel(config, **kw)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, **kw)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._core = None
        self.gradient_checkpointing = False
        #: tokens per chunk of the LM loss computed without full logits (None: full logits)
        self.loss_chunk_size: int | str | None = None
        if not self._on_meta():
            self._init_weights()
            self.rebind()

    # -- binding ---------------------------------------------------------------------------

    def _on_meta(self) -> bool:
        return self.model.embed_tokens.weight.is_meta

    def _init_weights(self) -> None:
        std = 0.02
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    m.weight.normal_(0.0, std)
                    if m.bias is not None:
                        m.bias.zero_()
                elif isinstance(m, nn.Embedding):
                    m.weight.normal_(0.0, std)

    def _core_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, tuple[float, float]]]:
        from ..adapters import lora_settings

        lora = lora_settings(self)
        named = {
            k: v
            for k, v in self.named_parameters()
            if ".base_layer." not in k and ".lora_" not in k
        }
        named.update(lora["tensors"])
        named["model.rotary_emb.inv_freq"] = self.model.rotary_emb.inv_freq
        return named, lora["settings"]

    def _make_core(self) -> _core.LlamaCore:
        tensors, lora = self._core_tensors()
        return _core.LlamaCore(self.config.to_json(), tensors, lora)

    def _after_assign(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # -- I/O -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, path: PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
    ) -> LlamaForCausalLM:
        """Load a HF checkpoint: ``config.json`` and ``model.safetensors`` or shards listed in
        ``model.safetensors.index.json``, read by the Rust loader and converted to ``dtype``
        (default: as stored) on ``device``.

        Memory: each tensor is read from the file straight into its own buffer (the header is
        validated through a memory map that never touches the data), so loading peaks at the
        weights themselves, not at the file plus a copy, and nothing of the file stays mapped.
        With ``tie_word_embeddings`` the checkpoint's embedding is one tensor shared by
        ``model.embed_tokens`` and ``lm_head`` (as transformers ties them); a stored
        ``lm_head.weight`` is dropped. Unlike transformers, whose parameters stay backed by the
        file mapping and enter RSS as they are first touched, the weights here are resident
        after loading (tests/test_lora_memory.py)."""
        config = LlamaConfig.from_pretrained(path)
        dev = str(torch.device(device))
        if dev == "cuda":
            dev = "cuda:0"
        sd = _core.load_safetensors(os.fspath(path), None if dtype is None else str(dtype), dev)
        sd.pop("model.rotary_emb.inv_freq", None)
        with torch.device("meta"):
            model = cls(config)
        expected = set(model.state_dict())
        if config.tie_word_embeddings:
            expected.discard("lm_head.weight")
            sd.pop("lm_head.weight", None)
        missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
            if unexpected:
                parts.append(
                    f"unexpected {len(unexpected)} tensors (e.g. {', '.join(unexpected[:3])})"
                )
            raise CheckpointError(
                f"{path}: checkpoint does not match config.json: " + "; ".join(parts)
            )
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        wrong = [k for k in sorted(expected) if tuple(sd[k].shape) != shapes[k]]
        if wrong:
            k = wrong[0]
            raise CheckpointError(
                f"{path}: {k} has shape {tuple(sd[k].shape)}, config.json implies {shapes[k]}"
                + (f" ({len(wrong) - 1} more tensors disagree)" if len(wrong) > 1 else "")
            )
        model.model.rotary_emb.inv_freq = _core.llama_rope_inv_freq(config.to_json()).to(dev)
        model.load_state_dict(sd, strict=False, assign=True)
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save_pretrained(self, path: PathLike, max_shard_size: int | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` (or shards of at most
        ``max_shard_size`` bytes with ``model.safetensors.index.json``) that transformers loads."""
        out = pathlib.Path(path)
        out.mkdir(parents=True, exist_ok=True)
        sd = {k: v for k, v in self.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
        if self.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        cfg = self.config.to_dict()
        cfg["torch_dtype"] = str(self.model.embed_tokens.weight.dtype).replace("torch.", "")
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
        if max_shard_size is None:
            _core.save_safetensors(sd, os.fspath(out / "model.safetensors"))
            return
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for k, v in sd.items():
            n = v.numel() * v.element_size()
            if shards[-1] and size + n > max_shard_size:
                shards.append({})
                size = 0
            shards[-1][k] = v
            size += n
        weight_map = {}
        total = sum(v.numel() * v.element_size() for v in sd.values())
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _core.save_safetensors(shard, os.fspath(out / name))
            weight_map.update(dict.fromkeys(shard, name))
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    # -- forward ---------------------------------------------------------------------------

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each decoder layer in the backward pass instead of storing its activations
        (``torch.utils.checkpoint``, non-reentrant, RNG state preserved for LoRA dropout)."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    def _layerwise(
        self,
        input_ids,
        inputs_embeds,
        attention_mask,
        position_ids,
        output_hidden_states,
        checkpointed,
        head=True,
    ):  # type: ignore[no-untyped-def]
        """Layer by layer through the Rust core (recomputed in the backward when
        ``checkpointed``); without ``head``, returns the final-normed states instead of logits."""
        from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

        core = self._bound()
        if inputs_embeds is None:
            if input_ids is None:
                raise ConfigError("pass exactly one of input_ids and inputs_embeds")
            inputs_embeds = core.embed(input_ids)
        cos, sin, mask = core.prepare(inputs_embeds, attention_mask, position_ids)
        h = inputs_embeds
        hidden = []
        # Early stop ends a recomputation by raising from a saved-tensor hook, which cannot
        # travel through the Rust layer; recompute whole layers instead.
        with set_checkpoint_early_stop(False):
            for i in range(self.config.num_hidden_layers):
                if output_hidden_states:
                    hidden.append(h)
                if checkpointed:
                    h = checkpoint(
                        core.layer, i, h, cos, sin, mask, self.training, use_reentrant=False
                    )
                else:
                    h = core.layer(i, h, cos, sin, mask, self.training)
        if head:
            normed, out = core.head(h)
        else:
            normed = out = self.model.norm(h)
        if output_hidden_states:
            hidden.append(normed)
        return out, hidden

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        loss_chunk_size: int | str | None = None,
    ) -> CausalLMOutput:
        """Args:
        input_ids: ``[B, T]`` int64, or
        inputs_embeds: ``[B, T, H]`` (how image tokens enter; see :func:`splice_image_tokens`).
        attention_mask: ``[B, T]``, 1 for tokens and 0 for padding.
        position_ids: ``[B, T]``; default ``0..T-1``.
        labels: ``[B, T]``; the loss is the shifted cross-entropy ignoring ``-100``.
        loss_chunk_size: with ``labels``, compute the loss from the final hidden states in
            chunks of this many tokens without materialising the ``[B, T, V]`` logits
            (:func:`voxlm.linear_ce.linear_cross_entropy`; gradients equal the unchunked loss);
            ``logits`` is then None. ``"auto"`` sizes chunks to ~256 MB of logits. Default:
            ``self.loss_chunk_size`` (None: full logits, as transformers).

        The first training-mode call with gradients fixes glibc's malloc thresholds for the
        process (:mod:`voxlm.allocator`; ``VOXLM_MALLOC_TRIM=0`` opts out).
        """
        if attention_mask is not None:
            _check_mask(attention_mask)
        if self.training and torch.is_grad_enabled():
            # process-wide glibc thresholds against RSS creep between steps (opt out:
            # VOXLM_MALLOC_TRIM=0; see voxlm.allocator)
            from ..allocator import configure_for_training

            configure_for_training()
        chunk = loss_chunk_size if loss_chunk_size is not None else self.loss_chunk_size
        if loss_chunk_size is None and not isinstance(self.lm_head, nn.Linear):
            # the model's default (e.g. a recipe's "auto"): full logits for an adapted head
            chunk = None
        if labels is not None and chunk is not None:
            from ..linear_ce import linear_cross_entropy

            if not isinstance(self.lm_head, nn.Linear):
                raise ConfigError(
                    "loss_chunk_size: the LM head carries an adapter; use the full-logits loss"
                )
            normed, hidden = self._layerwise(
                input_ids,
                inputs_embeds,
                attention_mask,
                position_ids,
                output_hidden_states,
                checkpointed=self.gradient_checkpointing
                and self.training
                and torch.is_grad_enabled(),
                head=False,
            )
            loss = linear_cross_entropy(normed, self.lm_head.weight, labels, chunk_size=chunk)
            return CausalLMOutput(
                logits=None,
                loss=loss,
                hidden_states=tuple(hidden) if output_hidden_states else None,
            )
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            logits, hidden = self._layerwise(
                input_ids,
                inputs_embeds,
                attention_mask,
                position_ids,
                output_hidden_states,
                checkpointed=True,
            )
        else:
            logits, hidden = self._bound().forward(
                input_ids,
                inputs_embeds,
                attention_mask,
                position_ids,
                output_hidden_states,
                False,
                self.training,
            )
        loss = None
        if labels is not None:
            from ..losses import lm_loss

            loss = lm_loss(logits, labels)
        return CausalLMOutput(
            logits=logits, loss=loss, hidden_states=tuple(hidden) if output_hidden_states else None
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 50,
        top_p: float = 1.0,
        num_beams: int = 1,
        repetition_penalty: float = 1.0,
        length_penalty: float = 1.0,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        seed: int | None = None,
        streamer: Callable[[torch.Tensor], Any] | None = None,
        cpu_kernels: bool = True,
    ) -> torch.Tensor:
        """Greedy, sampling or beam-search decoding with the loop in Rust (KV cache, GIL released).

        Batches are left-padded (pass ``attention_mask``). Returns ``[B, T + n]`` (prompt and new
        tokens) for ``input_ids`` and ``[B, n]`` for ``inputs_embeds``, as transformers. Rows that
        finished are padded with ``pad_token_id`` (default: the first EOS id; beam search pads
        with the first EOS id when ``pad_token_id`` is 0, as transformers' `pad_token_id or eos`).

        Args:
            top_k: used only when sampling (0 disables), as transformers' default 50.
            seed: reseeds torch's global generator first (sampling is then reproducible).
            streamer: called with the new tokens ``[B]`` after every step; return False to stop.
            cpu_kernels: on CPU in float32 without unmerged LoRA or adaption prompts, each decode
                step after the prompt runs through voxlm's fused kernels (rows of every
                matrix-vector product split over threads, no per-op dispatch); their sums run in a
                different order than libtorch's, so logits agree to float32 rounding, not bit for
                bit. False runs every step through libtorch ops, as the forward does.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ConfigError("generate: pass exactly one of input_ids and inputs_embeds")
        if attention_mask is not None:
            _check_mask(attention_mask)
        vocab = self.config.vocab_size
        if eos_token_id is None:
            eos = self.config.eos_token_ids
        else:
            one = isinstance(eos_token_id, int) or not isinstance(eos_token_id, Sequence)
            eos = [eos_token_id] if one else list(eos_token_id)
            for e in eos:
                if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < vocab:
                    raise ConfigError(
                        f"eos_token_id: expected token ids in [0, {vocab}), got {eos_token_id!r}"
                    )
        if pad_token_id is not None:
            check_int(pad_token_id, "pad_token_id", minimum=0)
        if seed is not None and not (
            isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**64
        ):
            raise ConfigError(f"seed: expected an integer in [0, 2**64), got {seed!r}")
        check_int(max_new_tokens, "max_new_tokens", minimum=0)
        check_int(num_beams, "num_beams", minimum=1)
        if do_sample:
            check_int(top_k, "top_k", minimum=0)
        pad = (
            pad_token_id
            if pad_token_id is not None
            else (
                self.config.pad_token_id
                if self.config.pad_token_id is not None
                else (eos[0] if eos else 0)
            )
        )
        if seed is not None:
            torch.manual_seed(seed)
        new = self._bound().generate(
            input_ids,
            inputs_embeds,
            attention_mask,
            int(max_new_tokens),
            bool(do_sample),
            float(temperature),
            int(top_k) if do_sample else 0,
            float(top_p) if do_sample else 1.0,
            int(num_beams),
            float(repetition_penalty),
            float(length_penalty),
            eos,
            int(pad),
            streamer,
            bool(cpu_kernels),
        )
        if input_ids is not None:
            return torch.cat([input_ids, new.to(input_ids.dtype)], dim=1)
        return new


__all__ = [
    "RMSNorm",
    "LlamaAttention",
    "LlamaMLP",
    "LlamaDecoderLayer",
    "LlamaRotaryEmbedding",
    "LlamaModel",
    "CausalLMOutput",
    "LlamaForCausalLM",
]

"""LLaMA config with transformers' field names, validated by the Rust core."""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import _core
from ..exceptions import CheckpointError, ConfigError

PathLike = str | os.PathLike[str]


@dataclass
class LlamaConfig:
    """A LLaMA config with transformers' field names. ``rope_scaling`` is None, or a dict with
    ``rope_type`` ``"linear"`` (``factor``) or ``"llama3"`` (``factor``, ``low_freq_factor``,
    ``high_freq_factor``, ``original_max_position_embeddings``)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        norm = json.loads(_core.parse_llama_config(json.dumps(self._hf_dict())))
        self.num_key_value_heads = norm["num_key_value_heads"]
        self.head_dim = norm["head_dim"]

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))

    def _hf_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        d = {**self.extra, **d}
        d["model_type"] = "llama"
        d.setdefault("hidden_act", "silu")
        if d.get("rope_scaling") is None:
            d.pop("rope_scaling", None)
        d.pop("rope_parameters", None)
        return d

    def to_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` content (transformers 4 layout; transformers 5 reads it too)."""
        d = self._hf_dict()
        d.setdefault("architectures", ["LlamaForCausalLM"])
        return d

    def to_json(self) -> str:
        return json.dumps(self._hf_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        """From a ``config.json`` dict (transformers 4 or 5 layout); unknown fields are kept."""
        norm = json.loads(_core.parse_llama_config(json.dumps(d)))
        rs = norm["rope_scaling"]
        rope_scaling = None if rs["rope_type"] == "default" else rs
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        extra = {k: v for k, v in d.items() if k not in known and k not in ("rope_parameters",)}
        eos = d.get("eos_token_id")
        return cls(
            vocab_size=norm["vocab_size"],
            hidden_size=norm["hidden_size"],
            intermediate_size=norm["intermediate_size"],
            num_hidden_layers=norm["num_hidden_layers"],
            num_attention_heads=norm["num_attention_heads"],
            num_key_value_heads=norm["num_key_value_heads"],
            head_dim=norm["head_dim"],
            rms_norm_eps=norm["rms_norm_eps"],
            rope_theta=norm["rope_theta"],
            rope_scaling=rope_scaling,
            max_position_embeddings=norm["max_position_embeddings"],
            tie_word_embeddings=norm["tie_word_embeddings"],
            attention_bias=norm["attention_bias"],
            mlp_bias=norm["mlp_bias"],
            bos_token_id=norm["bos_token_id"],
            eos_token_id=eos,
            pad_token_id=norm["pad_token_id"],
            extra=extra,
        )

    @classmethod
    def from_pretrained(cls, path: PathLike) -> LlamaConfig:
        """Read ``config.json`` from a checkpoint directory (or the file itself)."""
        if not isinstance(path, (str, os.PathLike)):
            raise CheckpointError(
                f"path: expected a checkpoint folder or config.json path, got {path!r}"
            )
        p = pathlib.Path(path)
        f = p / "config.json" if p.is_dir() else p
        if not f.is_file():
            raise CheckpointError(f"{f}: no config.json")
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{f}: not valid JSON ({e})") from e
        return cls.from_dict(d)


__all__ = ["LlamaConfig", "PathLike"]

"""HF ``tokenizer.json`` tokenizer on the Rust tokenizers crate."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import torch

from .. import _core
from ..exceptions import ConfigError
from .config import PathLike


class Tokenizer:
    """A HF ``tokenizer.json`` tokenizer (Rust tokenizers crate) with BOS/EOS handling and batch
    encoding to padded tensors."""

    def __init__(
        self,
        path: PathLike,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
    ) -> None:
        self._core = _core.TokenizerCore(os.fspath(path))
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token

    @classmethod
    def from_pretrained(cls, path: PathLike) -> Tokenizer:
        """From a directory with ``tokenizer.json`` (and optionally ``tokenizer_config.json``)."""
        p = pathlib.Path(path)
        cfg: dict[str, Any] = {}
        if (p / "tokenizer_config.json").is_file():
            cfg = json.loads((p / "tokenizer_config.json").read_text())

        def tok(v: Any) -> str | None:
            return v.get("content") if isinstance(v, dict) else v

        return cls(
            p / "tokenizer.json" if p.is_dir() else p,
            bos_token=tok(cfg.get("bos_token")),
            eos_token=tok(cfg.get("eos_token")),
            pad_token=tok(cfg.get("pad_token")),
            add_bos_token=bool(cfg.get("add_bos_token", False)),
            add_eos_token=bool(cfg.get("add_eos_token", False)),
        )

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._core.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def vocab_size(self) -> int:
        return self._core.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self._core.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids; with ``add_special_tokens``, the tokenizer's own post-processor runs and
        BOS/EOS are added per ``add_bos_token``/``add_eos_token`` when it does not add them."""
        ids = list(self._core.encode(text, add_special_tokens))
        if add_special_tokens:
            b, e = self.bos_token_id, self.eos_token_id
            if self.add_bos_token and b is not None and (not ids or ids[0] != b):
                ids.insert(0, b)
            if self.add_eos_token and e is not None and (not ids or ids[-1] != e):
                ids.append(e)
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._core.decode(list(ids), skip_special_tokens)

    def batch_decode(
        self, batch: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = True
    ) -> list[str]:
        if isinstance(batch, torch.Tensor):
            batch = batch.tolist()
        return [self.decode(b, skip_special_tokens) for b in batch]

    def __call__(
        self,
        texts: str | Sequence[str],
        add_special_tokens: bool = True,
        padding_side: str = "left",
        pad_token_id: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode a batch to ``{"input_ids": [B, T], "attention_mask": [B, T]}``, padded on the
        left (for generation) or right."""
        if isinstance(texts, str):
            texts = [texts]
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        seqs = [self.encode(t, add_special_tokens) for t in texts]
        pad = (
            pad_token_id
            if pad_token_id is not None
            else (self.pad_token_id if self.pad_token_id is not None else (self.eos_token_id or 0))
        )
        n = max((len(s) for s in seqs), default=0)
        ids = torch.full((len(seqs), n), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):
            if not s:
                continue
            if padding_side == "left":
                ids[i, n - len(s) :] = torch.tensor(s)
                mask[i, n - len(s) :] = 1
            else:
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}


__all__ = ["Tokenizer"]

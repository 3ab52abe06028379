"""Records -> tensors: :class:`ReportDataset` (loads the images of each record) and
:class:`ReportCollator` (prompt + image placeholders + target -> padded LM batch).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..data import _as_array as _volume_array
from ..data import rust_plan, transform_path, transform_paths
from ..exceptions import ConfigError, DataError, ShapeError
from ..volume import Volume, load_image
from ._common import PathLike, check_record

Record = dict[str, Any]


def _to_tensor(x: Any) -> torch.Tensor:
    """A transform's output -> float32 tensor, channel first: a Volume's data gets a channel axis
    (``[1, *spatial]``) or its trailing channel axis moves first (4-D volumes, multi-channel
    ``.npy``, RGB PNG/JPEG — :func:`voxlm.data._as_array`'s rule, shared with ``load_batch``);
    arrays/tensors are taken as channel-first already."""
    if isinstance(x, Volume):
        a = _volume_array(x)
    elif isinstance(x, torch.Tensor):
        return x.detach().to(torch.float32).contiguous()
    else:
        a = np.asarray(x)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


class ReportDataset(torch.utils.data.Dataset):
    """A ``torch.utils.data.Dataset`` over reader records.

    Item ``i`` is a copy of ``records[i]`` with ``"image"`` replaced by a float32 tensor
    (``[C, *spatial]``: ``[C, D, H, W]`` for a volume, ``[C, H, W]`` for a 2D image) after
    ``transform``, ``"images"`` by a list of such tensors and ``"sequences"`` by a dict of them;
    the paths stay under ``"path"``, ``"paths"`` and ``"sequence_paths"``. ``labels`` arrays become
    int64 tensors.

    Args:
        records: from :func:`voxlm.datasets.read_records` (or hand-made dicts of the same keys).
        transform: applied to each loaded image (a voxlm/MONAI-style callable on a Volume or a
            channel-first array).
        image_loader: ``path -> Volume | array | tensor`` (default: :func:`voxlm.load_image`).
        stack_sequences: for records with ``sequences``: stack them as the channels of
            ``"image"`` (``[C, D, H, W]``, every sequence resampled onto the first one's grid,
            then ``transform``; :func:`voxlm.data.transform_paths`, fused in Rust when the
            chain allows) instead of a dict of separately transformed tensors.

    Raises :class:`DataError` at construction for a record whose file does not exist (naming
    the row and the path), so that no ``DataLoader`` worker fails later.
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        transform: Callable[[Any], Any] | None = None,
        image_loader: Callable[[PathLike], Any] | None = None,
        check_files: bool = True,
        stack_sequences: bool = False,
    ) -> None:
        self.stack_sequences = stack_sequences
        if isinstance(records, (str, bytes, Mapping)) or not hasattr(records, "__iter__"):
            raise DataError(
                "ReportDataset: records must be a list of record dicts, got "
                f"{type(records).__name__}"
            )
        self.records = []
        for i, r in enumerate(records):
            if not isinstance(r, Mapping):
                raise DataError(
                    f"ReportDataset: records[{i}]: expected a record dict, got {type(r).__name__}"
                )
            self.records.append(dict(r))
        for i, r in enumerate(self.records):
            if check_files:
                check_record(r, f"ReportDataset: records[{i}]")
        self.transform = transform
        self.image_loader = image_loader

    def __len__(self) -> int:
        return len(self.records)

    def load(self, path: PathLike) -> torch.Tensor:
        """One path -> the float32 tensor of an item (loader, then transform). With the default
        loader and a transform chain that fuses (:func:`voxlm.data.rust_plan`), the file is read
        and transformed in one Rust pass, as ``load_batch``."""
        if self.image_loader is None:
            if self.transform is not None and rust_plan(self.transform) is not None:
                return torch.from_numpy(transform_path(path, self.transform))
            x = load_image(path)
        else:
            x = self.image_loader(path)
        if self.transform is not None:
            x = self.transform(x)
        return _to_tensor(x)

    def __getitem__(self, i: int) -> Record:
        r = self.records[i]
        item = dict(r)
        if isinstance(r.get("image"), (str, os.PathLike)):
            item["path"] = os.fspath(r["image"])
            item["image"] = self.load(r["image"])
        if r.get("images"):
            item["paths"] = [os.fspath(p) for p in r["images"]]
            item["images"] = [self.load(p) for p in r["images"]]
        if r.get("sequences"):
            item["sequence_paths"] = {k: os.fspath(p) for k, p in r["sequences"].items()}
            if self.stack_sequences:
                paths = list(item["sequence_paths"].values())
                item.pop("sequences")
                item["image"] = torch.from_numpy(transform_paths(paths, self.transform))
            else:
                item["sequences"] = {k: self.load(p) for k, p in r["sequences"].items()}
        if isinstance(r.get("labels"), np.ndarray):
            item["labels"] = torch.from_numpy(np.asarray(r["labels"], dtype=np.int64))
        return item


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of ``token``: voxlm's / tokenizers' ``token_to_id``, or transformers'
    ``convert_tokens_to_ids`` (None where that answers the unknown token for another token)."""
    if hasattr(tokenizer, "token_to_id"):
        return tokenizer.token_to_id(token)
    if hasattr(tokenizer, "convert_tokens_to_ids"):
        i = tokenizer.convert_tokens_to_ids(token)
        unk = getattr(tokenizer, "unk_token_id", None)
        unk_tok = getattr(tokenizer, "unk_token", None)
        return None if i is None or (i == unk and token != unk_tok) else int(i)
    raise ConfigError(
        f"tokenizer: {type(tokenizer).__name__} has neither token_to_id nor convert_tokens_to_ids"
    )


def _stack(tensors: Sequence[torch.Tensor], what: str, ids: Sequence[Any]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        detail = ", ".join(f"{i}: {tuple(t.shape)}" for i, t in zip(ids, tensors))
        hint = "" if what == "labels" else "; add a Resize / ResizeWithPadOrCrop transform"
        raise ShapeError(
            f"ReportCollator: {what} of different shapes in one batch ({detail}){hint}"
        )
    return torch.stack(list(tensors))


class ReportCollator:
    """Batch ReportDataset items for a causal LM with image placeholder tokens.

    Each sample's token sequence is ``[BOS] + enc(image_token * num_image_tokens + prompt) +
    enc(target) + [EOS]`` (training) or ``[BOS] + enc(placeholders + prompt)`` (generation). With
    ``template`` (``"alpaca"``, ``"vicuna"``, ``"llama3"``: :func:`voxlm.llm.format_prompt`) the
    prompt is wrapped first, the placeholders going before the instruction. Prompt and target are
    encoded separately (no special tokens) and concatenated, so the boundary is exact.

    Args:
        tokenizer: a :class:`voxlm.llm.Tokenizer` (``encode``, ``bos/eos/pad_token_id``,
            ``token_to_id``).
        num_image_tokens: placeholders per image (M3D 256, Dia-LLaMA 32; 0 = none).
        max_length: the longest sequence; the target is cut first (its EOS kept), so the BOS,
            the image placeholders and the prompt always stay whole; a prompt that does not fit
            raises ConfigError. (The references cut the joint sequence from the end instead: M3D's
            ``CapDataset``/``VQADataset`` tokenize with ``truncation=True`` and write EOS only
            when there is room; LLaVA's ``train.py`` cuts ``input_ids``/``labels`` at
            ``model_max_length``. With a prompt that fits, both keep the prompt too; they differ
            from this only in the EOS of a cut target.)
        prompt: text, or ``record -> text`` (e.g. Dia-LLaMA's label sentences, a VQA question).
        image_token: the placeholder token (one id in the tokenizer).
        padding_side: ``"right"`` (training) or ``"left"``; generation always pads left.
        target_key: the record key of the target text (``"report"``, ``"answer"``, a section via
            ``"sections.findings"``) or ``record -> text``.
        mode: ``"train"`` (labels) or ``"generate"`` (prompt only; targets under ``references``).
        template: optional prompt template name.
        add_bos / add_eos: prepend BOS / append EOS to the target.

    Returns a dict: ``images`` float32 ``[B, C, *spatial]`` (records with ``image``; ``[B, V, C,
    H, W]`` for ``images`` when every sample has the same views, else a list), ``sequences``
    {name: ``[B, C, *spatial]``}, ``input_ids`` / ``attention_mask`` int64 ``[B, T]``,
    ``labels`` int64 ``[B, T]`` (-100 on BOS, placeholders, prompt and padding; training only),
    ``references`` (generation), ``ids``, and when the records have them ``cls_labels`` int64
    ``[B, L]`` and ``pirads`` int64 ``[B]``.
    """

    def __init__(
        self,
        tokenizer: Any,
        num_image_tokens: int,
        max_length: int,
        prompt: str | Callable[[Mapping[str, Any]], str] = "",
        image_token: str = "<im_patch>",
        padding_side: str = "right",
        target_key: str | Callable[[Mapping[str, Any]], str] = "report",
        mode: str = "train",
        template: str | None = None,
        add_bos: bool = True,
        add_eos: bool = True,
    ) -> None:
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        if mode not in ("train", "generate"):
            raise ConfigError(f"mode: expected 'train' or 'generate', got {mode!r}")
        if int(num_image_tokens) < 0:
            raise ConfigError(f"num_image_tokens: expected >= 0, got {num_image_tokens}")
        if int(max_length) < 1:
            raise ConfigError(f"max_length: expected >= 1, got {max_length}")
        self.tokenizer, self.num_image_tokens, self.max_length = (
            tokenizer,
            int(num_image_tokens),
            int(max_length),
        )
        self.prompt, self.image_token, self.padding_side = prompt, image_token, padding_side
        self.target_key, self.mode, self.template = target_key, mode, template
        self.add_bos, self.add_eos = add_bos, add_eos
        self.image_token_id: int | None = None
        if self.num_image_tokens:
            self.image_token_id = _token_id(tokenizer, image_token)
            if self.image_token_id is None:
                raise ConfigError(
                    f"image_token: {image_token!r} is not a token of the tokenizer; add it "
                    "as a special token"
                )
        if not hasattr(tokenizer, "encode"):
            raise ConfigError(
                f"tokenizer: expected an object with encode(text, add_special_tokens=False), got "
                f"{type(tokenizer).__name__}"
            )
        self.bos_id = getattr(tokenizer, "bos_token_id", None) if add_bos else None
        self.eos_id = getattr(tokenizer, "eos_token_id", None)
        if add_eos and self.eos_id is None:
            raise ConfigError("add_eos: the tokenizer has no eos_token")
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)

    # -- text -----------------------------------------------------------------------------------
    def prompt_text(self, record: Mapping[str, Any]) -> str:
        """The prompt with its image placeholders (before tokenization)."""
        text = self.prompt(record) if callable(self.prompt) else str(self.prompt)
        image = self.image_token * self.num_image_tokens
        if self.template is not None:
            from ..llm import format_prompt

            return format_prompt(self.template, text, image=image)
        return image + text

    def target_text(self, record: Mapping[str, Any]) -> str:
        if callable(self.target_key):
            return str(self.target_key(record))
        key = self.target_key
        v: Any = record
        for part in key.split("."):
            if not isinstance(v, Mapping) or part not in v:
                raise DataError(
                    f"ReportCollator: record {record.get('id', '?')!r} has no {key!r} (target_key)"
                )
            v = v[part]
        if v is None or (isinstance(v, float) and v != v):
            # an empty table cell read as None / NaN would otherwise train on the text "None"
            raise DataError(
                f"ReportCollator: record {record.get('id', '?')!r} has {key!r} = {v!r} "
                "(target_key); expected text (an empty report is '')"
            )
        return str(v)

    def encode(self, record: Mapping[str, Any]) -> tuple[list[int], int]:
        """``(token ids, prompt length incl. BOS)`` of one record, before padding."""
        p = self._ids(self.prompt_text(record))
        if self.bos_id is not None:
            p = [self.bos_id, *p]
        if self.image_token_id is not None:
            n = sum(1 for t in p if t == self.image_token_id)
            if n != self.num_image_tokens:
                raise ConfigError(
                    f"ReportCollator: the prompt of record {record.get('id', '?')!r} "
                    f"encodes to {n} "
                    f"{self.image_token!r} tokens, expected {self.num_image_tokens}"
                )
        room = self.max_length - len(p) - (1 if self.mode == "train" and self.add_eos else 0)
        if room < 0 or (self.mode == "generate" and len(p) > self.max_length):
            raise ConfigError(
                f"max_length {self.max_length} is too short for the prompt of record "
                f"{record.get('id', '?')!r} ({len(p)} tokens incl. "
                f"{self.num_image_tokens} image tokens)"
            )
        if self.mode == "generate":
            return p, len(p)
        t = self._ids(self.target_text(record))
        if self.image_token_id is not None and self.image_token_id in t:
            # the model puts image features at every placeholder: one in the target would shift
            # or break that (the text holds the placeholder token literally)
            raise DataError(
                f"ReportCollator: the target of record {record.get('id', '?')!r} contains the "
                f"image placeholder token {self.image_token!r}; remove it from the text"
            )
        t = t[:room]
        if self.add_eos:
            t.append(int(self.eos_id))  # type: ignore[arg-type]
        return p + t, len(p)

    def _ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (a list, or a ``tokenizers`` Encoding's
        ``ids``)."""
        out = self.tokenizer.encode(text, add_special_tokens=False)
        return [int(t) for t in (out.ids if hasattr(out, "ids") else out)]

    # -- batch ----------------------------------------------------------------------------------
    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not items:
            raise DataError("ReportCollator: empty batch")
        ids = [it.get("id", str(i)) for i, it in enumerate(items)]
        batch: dict[str, Any] = {"ids": ids}
        # loaded images (tensors) in some items and not in others would be dropped for all or
        # stacked for part of the batch; records with paths only (tokenization alone) pass
        loaded = {
            "image": lambda v: isinstance(v, torch.Tensor),
            "images": lambda v: isinstance(v, list) and bool(v) and isinstance(v[0], torch.Tensor),
            "sequences": lambda v: (
                isinstance(v, Mapping) and any(isinstance(x, torch.Tensor) for x in v.values())
            ),
        }
        for key, is_loaded in loaded.items():
            have = [is_loaded(it.get(key)) for it in items]
            if any(have) and not all(have):
                raise DataError(
                    f"ReportCollator: some items of one batch have loaded {key!r} tensors and "
                    f"others not (without: {[str(i) for i, h in zip(ids, have) if not h]}; ids "
                    f"{[str(i) for i in ids]}); load every record through ReportDataset"
                )
        if all(isinstance(it.get("image"), torch.Tensor) for it in items):
            batch["images"] = _stack([it["image"] for it in items], "images", ids)
        elif all(loaded["images"](it.get("images")) for it in items):
            views = [
                torch.stack(it["images"])
                if len({tuple(v.shape) for v in it["images"]}) == 1
                else None
                for it in items
            ]
            if all(v is not None for v in views) and len({tuple(v.shape) for v in views}) == 1:  # type: ignore[union-attr]
                batch["images"] = torch.stack(views)  # type: ignore[arg-type]
            else:
                batch["images"] = [list(it["images"]) for it in items]
        if all(isinstance(it.get("sequences"), Mapping) for it in items):
            names = list(items[0]["sequences"])
            lacking = {
                k: [str(i) for i, it in zip(ids, items) if k not in it["sequences"]]
                for k in dict.fromkeys(k for it in items for k in it["sequences"])
            }
            lacking = {k: v for k, v in lacking.items() if v}
            if lacking:
                detail = "; ".join(f"{k!r} missing in {v}" for k, v in lacking.items())
                raise DataError(
                    f"ReportCollator: the items of one batch have different sequences ({detail}); "
                    f"ids {[str(i) for i in ids]}"
                )
            batch["sequences"] = {
                k: _stack([it["sequences"][k] for it in items], f"sequences[{k!r}]", ids)
                for k in names
            }
        enc = [self.encode(it) for it in items]
        n = max(len(s) for s, _ in enc)
        side = "left" if self.mode == "generate" else self.padding_side
        input_ids = torch.full((len(items), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        labels = torch.full((len(items), n), -100, dtype=torch.long)
        for i, (s, plen) in enumerate(enc):
            o = n - len(s) if side == "left" else 0
            input_ids[i, o : o + len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, o : o + len(s)] = 1
            labels[i, o + plen : o + len(s)] = torch.tensor(s[plen:], dtype=torch.long)
        batch["input_ids"], batch["attention_mask"] = input_ids, mask
        if self.mode == "train":
            batch["labels"] = labels
        else:
            batch["references"] = [
                self.target_text(it) if self._has_target(it) else None for it in items
            ]
        if all(it.get("labels") is not None for it in items):
            batch["cls_labels"] = _stack(
                [torch.as_tensor(np.asarray(it["labels"]), dtype=torch.long) for it in items],
                "labels",
                ids,
            )
        if all(it.get("pirads") is not None for it in items):
            batch["pirads"] = torch.tensor([int(it["pirads"]) for it in items], dtype=torch.long)
        return batch

    def _has_target(self, record: Mapping[str, Any]) -> bool:
        try:
            self.target_text(record)
            return True
        except DataError:
            return False

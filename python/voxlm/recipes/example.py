"""``example``: the built-in recipe that exercises the trainer and the CLI end to end in seconds.

It is **not a method from a paper** and involves no images: a tiny voxlm LLaMA learns to
continue arithmetic sequences (``x_t = (a + d t) mod modulus``, one token per number) generated
on the fly; the evaluation set holds ``n_eval`` rules ``(a, d)`` that the training set never
contains. Two stages, like the real recipes: ``lm`` trains every LLaMA weight, ``lora`` then
freezes them and trains LoRA adapters (saved as PEFT folders) on the same task. ``evaluate``
greedily continues each sequence from its first ``prompt_len`` numbers and scores exact match
and per-token accuracy against the rule. ``configs/example-tiny.yaml`` runs it on CPU:

    voxlm train configs/example-tiny.yaml --output-dir runs/example
    voxlm evaluate runs/example
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from ..exceptions import CheckpointError, ConfigError
from .base import Recipe, build_llm, check_field_types, check_saved_recipe
from .registry import register_recipe

PAD, BOS, EOS, OFFSET = 0, 1, 2, 3


@dataclass
class ExampleConfig:
    """Task and adapter settings (the LLaMA's shape comes from the config's ``model.llm``)."""

    modulus: int = 16
    seq_len: int = 12
    prompt_len: int = 4
    lm_learning_rate: float = 3e-3
    lora_learning_rate: float = 1e-3
    lora_steps_fraction: float = 0.5
    lora_r: int = 4
    lora_alpha: float = 8
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        if self.modulus < 2:
            raise ConfigError(f"recipe.modulus: expected >= 2, got {self.modulus}")
        if not 1 <= self.prompt_len < self.seq_len:
            raise ConfigError(
                f"recipe.prompt_len: expected 1..seq_len-1 ({self.seq_len - 1}), got "
                f"{self.prompt_len}"
            )
        if not 0 < self.lora_steps_fraction <= 1:
            raise ConfigError(
                f"recipe.lora_steps_fraction: expected (0, 1], got {self.lora_steps_fraction}"
            )


def split_pairs(modulus: int, n_eval: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``modulus * (modulus - 1)`` rules ``(a, d)`` (``d != 0``), shuffled with ``seed`` and
    split into ``n_eval`` held-out pairs and the rest for training: ``(train [P - n_eval, 2],
    eval [n_eval, 2])``, disjoint, so evaluation scores continuations of unseen sequences."""
    a, d = torch.meshgrid(torch.arange(modulus), torch.arange(1, modulus), indexing="ij")
    pairs = torch.stack([a.reshape(-1), d.reshape(-1)], 1)
    if not 1 <= n_eval < len(pairs):
        raise ConfigError(
            f"data.n_eval: expected 1..{len(pairs) - 1} held-out (a, d) pairs (modulus {modulus} "
            "has "
            f"{len(pairs)}), got {n_eval}"
        )
    perm = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    return pairs[perm[n_eval:]], pairs[perm[:n_eval]]


class ArithmeticSequences(Dataset):
    """Sequences ``[BOS, a, a+d, ..., a+(L-1)d (mod m)]`` as token ids (numbers + 3) for the rules
    ``pairs [P, 2]`` (``(a, d)`` rows): ``n`` of them drawn with ``seed`` (with repetition), or each
    pair once in order when ``n`` is None. Item: ``{"id": str, "input_ids": int64 [L + 1]}``."""

    def __init__(
        self,
        n: int | None,
        modulus: int,
        seq_len: int,
        seed: int = 0,
        pairs: torch.Tensor | None = None,
    ) -> None:
        if pairs is None:  # every rule
            a, d = torch.meshgrid(torch.arange(modulus), torch.arange(1, modulus), indexing="ij")
            pairs = torch.stack([a.reshape(-1), d.reshape(-1)], 1)
        if n is None:
            chosen = pairs
        else:
            if n <= 0:
                raise ConfigError(f"data: expected a positive number of sequences, got {n}")
            g = torch.Generator().manual_seed(seed)
            chosen = pairs[torch.randint(0, len(pairs), (n,), generator=g)]
        a, d = chosen[:, :1], chosen[:, 1:]
        x = (a + d * torch.arange(seq_len)) % modulus + OFFSET
        self.pairs = chosen
        self.ids = torch.cat([torch.full((len(chosen), 1), BOS), x], 1)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"id": f"seq-{i}", "input_ids": self.ids[i]}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack: ``input_ids [B, T]``, ``attention_mask`` ones, ``labels = input_ids``, ``ids``."""
    ids = torch.stack([it["input_ids"] for it in items])
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": ids.clone(),
        "ids": [it["id"] for it in items],
    }


@register_recipe("example")
class ExampleRecipe(Recipe):
    """A tiny LLaMA continuing arithmetic sequences (CLI/trainer exercise; see module doc)."""

    Config = ExampleConfig

    def __init__(self, config: ExampleConfig, llm_spec: Any) -> None:
        super().__init__()
        self.config = config
        self.llm_spec = llm_spec
        vocab = config.modulus + OFFSET
        self.llm = build_llm(
            llm_spec,
            vocab_size=vocab,
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
            max_position_embeddings=max(64, config.seq_len + 2),
        )
        if self.llm.config.vocab_size < vocab:
            raise ConfigError(
                f"model.llm.vocab_size: expected >= {vocab} (modulus + 3), got "
                f"{self.llm.config.vocab_size}"
            )

    # -- building -------------------------------------------------------------------------

    @classmethod
    def from_config(cls, recipe: Mapping[str, Any], model: Mapping[str, Any]) -> ExampleRecipe:
        fields = {k: v for k, v in dict(recipe).items() if k != "name"}
        known = {f.name for f in dataclasses.fields(ExampleConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(
                f"recipe: unknown example fields {unknown} (known: {', '.join(sorted(known))})"
            )
        fields = check_field_types(ExampleConfig, fields)
        unknown_model = sorted(set(dict(model)) - {"llm"})
        if unknown_model:
            raise ConfigError(
                f"model: unknown field(s) {unknown_model} for the example recipe; known: llm"
            )
        spec = dict(model).get(
            "llm",
            {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
            },
        )
        return cls(ExampleConfig(**fields), spec)

    def has_lora(self) -> bool:
        return any(".lora_" in n for n, _ in self.llm.named_parameters())

    def _lm_trainable(self, model: Any) -> None:
        for n, p in self.named_parameters():
            p.requires_grad_(".lora_" not in n)

    def _lora_trainable(self, model: Any) -> None:
        from ..adapters import LoraConfig, add_lora

        c = self.config
        if not self.has_lora():
            add_lora(
                self.llm,
                LoraConfig(
                    r=c.lora_r,
                    lora_alpha=c.lora_alpha,
                    lora_dropout=c.lora_dropout,
                    target_modules=list(c.lora_target_modules),
                ),
            )
        for n, p in self.named_parameters():
            p.requires_grad_(".lora_" in n)

    def stages(self, args: Any) -> list[Any]:
        """``lm`` (all weights, ``lm_learning_rate``) then ``lora`` (adapters only,
        ``lora_learning_rate``, ``lora_steps_fraction`` of the steps)."""
        from ..train import Stage

        c = self.config
        lora_args = args.replace(learning_rate=c.lora_learning_rate)
        if args.max_steps > 0:
            lora_args = lora_args.replace(
                max_steps=max(1, round(args.max_steps * c.lora_steps_fraction))
            )
        else:
            lora_args = lora_args.replace(
                num_train_epochs=args.num_train_epochs * c.lora_steps_fraction
            )
        return [
            Stage("lm", args.replace(learning_rate=c.lm_learning_rate), self._lm_trainable),
            Stage("lora", lora_args, self._lora_trainable),
        ]

    def datasets(self, data: Mapping[str, Any]) -> tuple[Any, Any]:
        d = dict(data)
        fmt = d.get("format", "arithmetic")
        if fmt != "arithmetic":
            raise ConfigError(
                f"data.format: the example recipe reads 'arithmetic' (generated), got {fmt!r}"
            )
        known = {"format", "seed", "n_train", "n_eval"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"data: unknown keys {unknown} for the example recipe (known: "
                f"{', '.join(sorted(known))})"
            )
        c = self.config
        try:
            seed, n_train, n_eval = (
                int(d.get("seed", 0)),
                int(d.get("n_train", 256)),
                int(d.get("n_eval", 32)),
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f"data: seed, n_train and n_eval must be integers ({e})") from e
        # disjoint rules: no evaluation sequence (same a and d) is in the training set
        train_pairs, eval_pairs = split_pairs(c.modulus, n_eval, seed)
        train = ArithmeticSequences(n_train, c.modulus, c.seq_len, seed, pairs=train_pairs)
        ev = ArithmeticSequences(None, c.modulus, c.seq_len, seed + 1, pairs=eval_pairs)
        return train, ev

    def collator(self) -> Any:
        return collate

    # -- forward / inference ----------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """``input_ids [B, T]`` -> the LLaMA's output (``.loss`` with ``labels``)."""
        return self.llm(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        **kw: Any,
    ) -> torch.Tensor:
        """Greedy continuation of prompts ``[B, 1 + prompt_len]``; returns the new tokens
        ``[B, n]``."""
        n = (
            max_new_tokens
            if max_new_tokens is not None
            else self.config.seq_len - self.config.prompt_len
        )
        out = self.llm.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=n,
            eos_token_id=EOS,
            pad_token_id=PAD,
            **kw,
        )
        return out[:, input_ids.shape[1] :]

    def predict(self, dataset: Any, batch_size: int = 32) -> list[dict[str, Any]]:
        """One row per item: ``id``, ``prompt``, ``target``, ``prediction`` (numbers,
        space-separated)."""
        c = self.config
        self.eval()
        rows = []
        for s in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(s, min(len(dataset), s + batch_size))]
            ids = torch.stack([it["input_ids"] for it in items])
            prompt = ids[:, : 1 + c.prompt_len]
            new = self.generate(prompt, torch.ones_like(prompt))
            for it, p, t, g in zip(items, prompt, ids[:, 1 + c.prompt_len :], new):
                rows.append(
                    {
                        "id": it["id"],
                        "prompt": " ".join(str(int(v) - OFFSET) for v in p[1:]),
                        "target": " ".join(str(int(v) - OFFSET) for v in t),
                        "prediction": " ".join(str(int(v) - OFFSET) for v in g[: t.numel()]),
                    }
                )
        return rows

    def evaluate(
        self, dataset: Any, output_dir: str | os.PathLike[str] | None = None, **kw: Any
    ) -> dict[str, Any]:
        """Exact match (whole continuation right) and token accuracy of greedy continuations."""
        rows = self.predict(dataset)
        exact = sum(r["prediction"] == r["target"] for r in rows) / len(rows)
        tok_right = tok_all = 0
        for r in rows:
            t, p = r["target"].split(), r["prediction"].split()
            tok_all += len(t)
            tok_right += sum(a == b for a, b in zip(t, p))
        metrics = {
            "exact_match": exact,
            "token_accuracy": tok_right / max(tok_all, 1),
            "n": len(rows),
        }
        if output_dir is not None:
            out = pathlib.Path(output_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "eval.json").write_text(json.dumps(metrics, indent=2))
            with (out / "predictions.csv").open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["id", "prompt", "target", "prediction"])
                w.writeheader()
                w.writerows(rows)
        return metrics

    # -- persistence ----------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """``config.json`` (recipe name, Config, the LLaMA config, whether LoRA is on),
        ``model.safetensors`` (every weight), and ``adapter/`` (PEFT folder) with LoRA."""
        from ..adapters import save_adapter
        from ..train.checkpoint import save_tensors

        out = pathlib.Path(path)
        out.mkdir(parents=True, exist_ok=True)
        cfg = {
            "recipe": self.name,
            "config": dataclasses.asdict(self.config),
            "llm": self.llm.config.to_dict(),
            "lora": self.has_lora(),
        }
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
        save_tensors(
            {k: v for k, v in self.state_dict().items() if not k.endswith("inv_freq")},
            out / "model.safetensors",
        )
        if self.has_lora():
            save_adapter(self.llm, out / "adapter")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> ExampleRecipe:
        from ..train.checkpoint import load_tensors

        cfg = check_saved_recipe(path, "example")
        llm = {
            k: v
            for k, v in cfg["llm"].items()
            if k
            in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "vocab_size",
            )
        }
        if not isinstance(cfg.get("config"), dict) or not isinstance(cfg.get("llm"), dict):
            raise CheckpointError(f"{path}/config.json: expected 'config' and 'llm' objects")
        check_field_types(ExampleConfig, cfg["config"], f"{path}/config.json: config")
        try:
            example_config = ExampleConfig(**cfg["config"])
        except TypeError as e:
            raise CheckpointError(f"{path}/config.json: config: {e}") from e
        model = cls(example_config, llm)
        if cfg.get("lora"):
            model._lora_trainable(model)
        sd = load_tensors(pathlib.Path(path) / "model.safetensors")
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith("inv_freq")]
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: weights do not fit the config (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]})"
            )
        model.eval()
        return model

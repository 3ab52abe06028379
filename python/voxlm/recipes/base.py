"""What every recipe is: an ``nn.Module`` with a config, a stage list, datasets, a collator,
generation, evaluation and ``save_pretrained`` / ``from_pretrained``.

The CLI drives a recipe only through this interface (``voxlm train | generate | evaluate``):

.. code-block:: python

    cls = get_recipe(cfg["recipe"]["name"])
    model = cls.from_config(cfg["recipe"], cfg.get("model", {}))
    train_ds, eval_ds = model.datasets(cfg["data"])            # voxlm.datasets readers
    run_stages(model, model.stages(args), train_ds, eval_ds, data_collator=model.collator())
    model.save_pretrained(run_dir / "model")
    # later
    model = cls.from_pretrained(run_dir / "model")
    model.evaluate(test_ds, out_dir)                           # eval.json + predictions.csv

The ``model`` section of a config names the pretrained parts: ``llm`` is a path to a HF LLaMA
folder (``config.json`` + safetensors) or a dict of :class:`~voxlm.llm.LlamaConfig` fields for
a randomly initialised model (tiny configs and tests); ``tokenizer`` is a path to a
``tokenizer.json`` / tokenizer folder, or ``"bundled:ctrg-bpe"`` (a BPE tokenizer trained on
CTRG-Chest reports that ships with voxlm). :func:`build_tokenizer` and :func:`build_llm` read
these specs.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn

from ..exceptions import CheckpointError, ConfigError

PathLike = str | os.PathLike[str]

BUNDLED_TOKENIZERS = {"bundled:ctrg-bpe": ("ctrg_bpe_tokenizer.json", "<s>", "</s>", "<pad>")}


class Recipe(nn.Module):
    """Base class of the recipes. Subclasses set ``Config`` (a dataclass with the paper's
    defaults) and implement the methods below; ``name`` is set by ``@register_recipe``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object

    # -- building -------------------------------------------------------------------------

    @classmethod
    def from_config(cls, recipe: Mapping[str, Any], model: Mapping[str, Any]) -> Recipe:
        """Build from the CLI config's ``recipe`` section (``name`` + Config fields) and
        ``model`` section (paths or specs of the pretrained parts)."""
        raise NotImplementedError(f"{cls.__name__}.from_config")

    def stages(self, args: Any) -> list[Any]:
        """The training stages, ``[voxlm.train.Stage(name, args, set_trainable), ...]``, with
        ``args`` (a ``TrainingArguments``) as the base each stage derives its own from."""
        raise NotImplementedError(f"{type(self).__name__}.stages")

    def datasets(self, data: Mapping[str, Any]) -> tuple[Any, Any]:
        """``(train, eval)`` torch Datasets from the config's ``data`` section (``format``,
        ``root``, transform settings); ``eval`` may be None."""
        raise NotImplementedError(f"{type(self).__name__}.datasets")

    def collator(self) -> Any:
        """The ``data_collator`` turning dataset items into the keyword arguments of forward."""
        raise NotImplementedError(f"{type(self).__name__}.collator")

    # -- inference ------------------------------------------------------------------------

    def evaluate(self, dataset: Any, output_dir: PathLike | None = None, **generate_kwargs: Any) -> dict[str, Any]:
        """Generate for ``dataset`` and score with the paper's metrics; with ``output_dir``,
        write ``eval.json`` and ``predictions.csv`` (one row per sample)."""
        raise NotImplementedError(f"{type(self).__name__}.evaluate")

    # -- persistence ----------------------------------------------------------------------

    def save_pretrained(self, path: PathLike) -> None:
        raise NotImplementedError(f"{type(self).__name__}.save_pretrained")

    @classmethod
    def from_pretrained(cls, path: PathLike) -> Recipe:
        raise NotImplementedError(f"{cls.__name__}.from_pretrained")


def check_saved_recipe(path: PathLike, expected: str) -> dict[str, Any]:
    """Read ``path/config.json`` written by a recipe's ``save_pretrained`` and check that it was
    written by recipe ``expected`` (a ``CheckpointError`` names both otherwise)."""
    import json

    f = pathlib.Path(path) / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{path}: no config.json (not a saved voxlm recipe)")
    try:
        cfg = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from e
    got = cfg.get("recipe")
    if got != expected:
        raise CheckpointError(f"{path}: a saved {got!r} recipe, expected {expected!r}")
    return cfg


def build_tokenizer(spec: Any, image_token: str | None = None) -> Any:
    """A :class:`voxlm.llm.Tokenizer` from a path (``tokenizer.json`` or a folder with it) or a
    bundled name (``"bundled:ctrg-bpe"``)."""
    from ..datasets import HERE
    from ..llm import Tokenizer

    if isinstance(spec, str) and spec in BUNDLED_TOKENIZERS:
        f, bos, eos, pad = BUNDLED_TOKENIZERS[spec]
        return Tokenizer(HERE / f, bos_token=bos, eos_token=eos, pad_token=pad)
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(f"model.tokenizer: expected a path or one of {sorted(BUNDLED_TOKENIZERS)}, got {spec!r}")
    p = pathlib.Path(spec)
    if not p.exists():
        raise ConfigError(f"model.tokenizer: {p} does not exist")
    return Tokenizer.from_pretrained(p)


def build_llm(spec: Any, dtype: Any = None, **overrides: Any) -> Any:
    """A :class:`voxlm.llm.LlamaForCausalLM` from a HF folder path, or from a dict of
    ``LlamaConfig`` fields (random initialisation; ``overrides`` such as ``vocab_size`` fill
    fields the dict leaves out)."""
    from ..llm import LlamaConfig, LlamaForCausalLM

    if isinstance(spec, Mapping):
        fields = {**overrides, **dict(spec)}
        unknown = sorted(set(fields) - set(LlamaConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"model.llm: unknown LlamaConfig fields {unknown}")
        return LlamaForCausalLM(LlamaConfig(**fields), dtype=dtype)
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(f"model.llm: expected a HF checkpoint folder or a dict of LlamaConfig fields, got {spec!r}")
    p = pathlib.Path(spec)
    if not (p / "config.json").is_file():
        raise ConfigError(f"model.llm: {p} is not a HF checkpoint folder (no config.json)")
    return LlamaForCausalLM.from_pretrained(p, dtype=dtype)

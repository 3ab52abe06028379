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

import collections.abc
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ..exceptions import CheckpointError, ConfigError, ShapeError, VoxlmError

PathLike = str | os.PathLike[str]

BUNDLED_TOKENIZERS = {"bundled:ctrg-bpe": ("ctrg_bpe_tokenizer.json", "<s>", "</s>", "<pad>")}


class Recipe(nn.Module):
    """Base class of the recipes. Subclasses set ``Config`` (a dataclass with the paper's
    defaults) and implement the methods below; ``name`` is set by ``@register_recipe``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for m in ("from_config", "from_pretrained"):
            if isinstance(cls.__dict__.get(m), classmethod):
                setattr(cls, m, classmethod(_named_allocation_failure(cls.__dict__[m].__func__)))
        # argument checks every recipe's entry points share (each names expected and given)
        for m, check in (
            ("generate", _check_generate_args),
            ("evaluate", _check_evaluate_args),
            ("datasets", _check_datasets_args),
            ("stages", _check_stages_args),
            ("save_pretrained", _check_path_arg),
        ):
            fn = cls.__dict__.get(m)
            if callable(fn) and not getattr(fn, "_voxlm_checked", False):
                setattr(cls, m, _checked(fn, check))
        fwd = cls.__dict__.get("forward")
        if callable(fwd) and not getattr(fwd, "_voxlm_checked", False):
            cls.forward = _batch_checked(fwd)

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

    def _rebind_parts(self) -> None:
        """Bind every Rust-computed part again (``rebind``) after its parameters were replaced
        (e.g. ``load_state_dict(assign=True)`` on the recipe, or weights loaded into a part)."""
        for m in self.modules():
            if m is not self and hasattr(m, "rebind") and callable(m.rebind):
                m.rebind()

    # -- inference ------------------------------------------------------------------------

    def evaluate(
        self, dataset: Any, output_dir: PathLike | None = None, **generate_kwargs: Any
    ) -> dict[str, Any]:
        """Generate for ``dataset`` and score with the paper's metrics; with ``output_dir``,
        write ``eval.json`` and ``predictions.csv`` (one row per sample)."""
        raise NotImplementedError(f"{type(self).__name__}.evaluate")

    # -- persistence ----------------------------------------------------------------------

    def save_pretrained(self, path: PathLike) -> None:
        raise NotImplementedError(f"{type(self).__name__}.save_pretrained")

    @classmethod
    def from_pretrained(cls, path: PathLike) -> Recipe:
        raise NotImplementedError(f"{cls.__name__}.from_pretrained")


def _checked(fn: Any, check: Any) -> Any:
    """``fn`` (a recipe method) with ``check(self, *args, **kwargs)`` run first."""
    import functools

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        check(self, fn.__name__, *args, **kwargs)
        return fn(self, *args, **kwargs)

    wrapper._voxlm_checked = True  # type: ignore[attr-defined]
    return wrapper


def _batch_checked(fn: Any) -> Any:
    """``forward`` with a DataError naming the missing batch keys (the trainer calls
    ``model(**batch)``: a collator that leaves out a key gave a bare TypeError)."""
    import functools
    import inspect

    from ..exceptions import DataError

    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            sig.bind(self, *args, **kwargs)
        except TypeError as e:
            required = [
                n
                for n, p in list(sig.parameters.items())[1 + len(args) :]
                if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            missing = [n for n in required if n not in kwargs]
            raise DataError(
                f"{type(self).__name__}.forward: the batch lacks {missing or '?'} ({e}); got keys "
                f"{sorted(kwargs)}"
            ) from None
        return fn(self, *args, **kwargs)

    wrapper._voxlm_checked = True  # type: ignore[attr-defined]
    return wrapper


def _first(args: tuple, kwargs: Mapping[str, Any], *names: str) -> tuple[bool, Any, str]:
    if args:
        return True, args[0], names[0]
    for n in names:
        if n in kwargs:
            return True, kwargs[n], n
    return False, None, names[0]


def _check_generate_args(self: Any, method: str, *args: Any, **kwargs: Any) -> None:
    """The image batch of ``generate`` (``images`` / ``pixel_values`` / ``volume``) is a tensor
    with real values on a device voxlm computes on; token ids (the example recipe) are integers."""
    from ..exceptions import DeviceError, DTypeError, VoxlmTypeError

    names = ("images", "pixel_values", "volume", "input_ids")
    given, x, name = _first(args, kwargs, *names)
    if not given:
        return
    import inspect

    params = list(inspect.signature(getattr(type(self), method)).parameters)[1:2]
    name = params[0] if params else name
    if name not in names:
        return
    where = f"{type(self).__name__}.{method}: {name}"
    if not isinstance(x, torch.Tensor):
        hint = " (convert with torch.from_numpy)" if type(x).__module__ == "numpy" else ""
        raise VoxlmTypeError(f"{where}: expected a torch.Tensor, got {type(x).__name__}{hint}")
    if x.is_complex():
        raise DTypeError(f"{where}: expected real values, got {x.dtype}")
    if name == "input_ids" and (x.is_floating_point() or x.dtype == torch.bool):
        raise DTypeError(f"{where}: expected integer token ids, got {x.dtype}")
    if x.device.type not in ("cpu", "cuda"):
        raise DeviceError(f"{where}: expected a tensor on cpu or cuda, got one on {x.device}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ShapeError(f"{where}: expected a non-empty batch, got shape {tuple(x.shape)}")


def _check_path_arg(self: Any, method: str, *args: Any, **kwargs: Any) -> None:
    from ..exceptions import VoxlmTypeError

    given, p, name = _first(args, kwargs, "path", "output_dir")
    if given and p is not None and not isinstance(p, (str, os.PathLike)):
        raise VoxlmTypeError(
            f"{type(self).__name__}.{method}: {name}: expected a folder path, got "
            f"{type(p).__name__}"
        )


def _check_evaluate_args(self: Any, method: str, *args: Any, **kwargs: Any) -> None:
    from ..exceptions import VoxlmTypeError

    given, ds, _ = _first(args, kwargs, "dataset")
    where = f"{type(self).__name__}.{method}"
    if given and (
        ds is None
        or isinstance(ds, (str, bytes, Mapping))
        or not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__"))
    ):
        raise VoxlmTypeError(
            f"{where}: dataset: expected a dataset of records (len + indexing, e.g. a "
            f"ReportDataset or a list of dicts), got {type(ds).__name__}"
        )
    if isinstance(ds, (list, tuple)):
        bad = [i for i, r in enumerate(ds[:1000]) if not isinstance(r, Mapping)]
        if bad:
            raise VoxlmTypeError(
                f"{where}: dataset[{bad[0]}]: expected a record (dict), got "
                f"{type(ds[bad[0]]).__name__}"
            )
    out = args[1] if len(args) > 1 else kwargs.get("output_dir")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise VoxlmTypeError(f"{where}: output_dir: expected a folder path, got {out!r}")
    bs = kwargs.get("batch_size")
    if bs is not None and (isinstance(bs, bool) or not isinstance(bs, int) or bs < 1):
        raise ConfigError(f"{where}: batch_size: expected an integer >= 1, got {bs!r}")


def _check_datasets_args(self: Any, method: str, *args: Any, **kwargs: Any) -> None:
    given, data, _ = _first(args, kwargs, "data")
    if not given:
        return
    if not isinstance(data, Mapping):
        raise ConfigError(f"data: expected a mapping (the config's data section), got {data!r}")
    root = data.get("root")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise ConfigError(f"data.root: expected a folder path, got {root!r}")


def _check_stages_args(self: Any, method: str, *args: Any, **kwargs: Any) -> None:
    from ..train import TrainingArguments

    given, a, _ = _first(args, kwargs, "args")
    if given and not isinstance(a, TrainingArguments):
        raise ConfigError(
            f"{type(self).__name__}.stages: args: expected a voxlm.train.TrainingArguments (e.g. "
            f"TrainingArguments.from_dict(config['train'])), got {type(a).__name__}"
        )


_ALLOCATION_FAILURES = ("can't allocate memory", "out of memory", "Cannot allocate memory")


def _named_allocation_failure(fn: Any) -> Any:
    """``fn`` (a recipe's ``from_config`` / ``from_pretrained``) with torch's allocator failure
    (a RuntimeError carrying a C++ ``enforce fail`` line, or ``torch.OutOfMemoryError``) raised
    as a ConfigError: sizes in a config that no machine memory holds are a config error."""
    import functools

    import torch

    @functools.wraps(fn)
    def wrapper(cls: Any, *args: Any, **kwargs: Any) -> Any:
        if fn.__name__ == "from_pretrained":
            given, p, _ = _first(args, kwargs, "path")
            if given and not isinstance(p, (str, os.PathLike)):
                raise CheckpointError(
                    f"{cls.__name__}.from_pretrained: path: expected a saved recipe folder, got "
                    f"{p!r}"
                )
        try:
            return fn(cls, *args, **kwargs)
        except (torch.OutOfMemoryError, MemoryError) as e:
            raise ConfigError(
                f"{cls.__name__}.{fn.__name__}: the configured sizes do not fit in memory "
                f"({type(e).__name__}); expected smaller sizes"
            ) from e
        except RuntimeError as e:
            if isinstance(e, VoxlmError) or not any(m in str(e) for m in _ALLOCATION_FAILURES):
                raise
            import re

            m = re.search(r"allocate (\d+) bytes", str(e))
            need = f" (torch tried to allocate {int(m.group(1)) / 2**30:.1f} GiB)" if m else ""
            raise ConfigError(
                f"{cls.__name__}.{fn.__name__}: the configured sizes do not fit in memory{need}; "
                "expected smaller sizes"
            ) from None

    return wrapper


def check_saved_recipe(path: PathLike, expected: str) -> dict[str, Any]:
    """Read ``path/config.json`` written by a recipe's ``save_pretrained`` and check that it was
    written by recipe ``expected`` (a ``CheckpointError`` names both otherwise)."""
    import json

    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"path: expected a saved recipe folder, got {path!r}")
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
        raise ConfigError(
            f"model.tokenizer: expected a path or one of {sorted(BUNDLED_TOKENIZERS)}, got {spec!r}"
        )
    p = pathlib.Path(spec)
    if not p.exists():
        raise ConfigError(f"model.tokenizer: {p} does not exist")
    return Tokenizer.from_pretrained(p)


def build_llm(
    spec: Any, dtype: Any = None, loss_chunk_size: int | str | None = "auto", **overrides: Any
) -> Any:
    """A :class:`voxlm.llm.LlamaForCausalLM` from a HF folder path, or from a dict of
    ``LlamaConfig`` fields (random initialisation; ``overrides`` such as ``vocab_size`` fill
    fields the dict leaves out).

    ``loss_chunk_size`` becomes the model's ``loss_chunk_size`` through
    :func:`voxlm.linear_ce.recipe_chunk_size`: ``"auto"`` (default) computes the LM loss in
    chunks without the ``[B, T, V]`` logits when the vocabulary has at least 65,536 tokens
    (the forward's ``logits`` is then None when ``labels`` are given; gradients equal the
    full-logits loss's), None keeps the full logits, an int sets the tokens per chunk."""
    from ..linear_ce import recipe_chunk_size

    llm = _build_llm(spec, dtype, **overrides)
    llm.loss_chunk_size = recipe_chunk_size(loss_chunk_size, llm.config.vocab_size)
    return llm


def _build_llm(spec: Any, dtype: Any = None, **overrides: Any) -> Any:
    from ..llm import LlamaConfig, LlamaForCausalLM

    if isinstance(spec, Mapping):
        fields = {**overrides, **dict(spec)}
        unknown = sorted(set(fields) - set(LlamaConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"model.llm: unknown LlamaConfig fields {unknown}")
        return LlamaForCausalLM(LlamaConfig(**fields), dtype=dtype)
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(
            "model.llm: expected a HF checkpoint folder or a dict of LlamaConfig fields, got "
            f"{spec!r}"
        )
    p = pathlib.Path(spec)
    if not (p / "config.json").is_file():
        raise ConfigError(f"model.llm: {p} is not a HF checkpoint folder (no config.json)")
    return LlamaForCausalLM.from_pretrained(p, dtype=dtype)


#: Fields of ``TrainingArguments`` that a recipe's Config may set (the method's training
#: hyper-parameters); :func:`recipe_train_args` says how they combine with the ``train`` section.
TRAIN_FIELDS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "weight_decay",
    "per_device_train_batch_size",
)

#: Generation fields of a recipe's Config (``generate`` / ``evaluate`` keyword overrides).
GEN_FIELDS = (
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "num_beams",
    "repetition_penalty",
    "seed",
)


def recipe_train_args(config: Any, args: Any, fields: tuple[str, ...] = TRAIN_FIELDS) -> Any:
    """A stage's ``TrainingArguments``: ``args`` (the config's ``train`` section) with each of
    ``fields`` taken from the recipe ``config`` wherever ``args`` leaves it at
    ``TrainingArguments``' default — an explicit value in ``train`` wins."""
    from ..train import TrainingArguments

    base = TrainingArguments()
    changes = {f: getattr(config, f) for f in fields if getattr(args, f) == getattr(base, f)}
    return args.replace(**changes) if changes else args


def generation_settings(
    config: Any, overrides: Mapping[str, Any], fields: tuple[str, ...] = GEN_FIELDS
) -> dict[str, Any]:
    """``{field: overrides.get(field, config.field)}`` for ``fields``; an override that is not one
    of them is a ``ConfigError`` naming the known ones."""
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(f"generate: unknown setting(s) {unknown}; known: {', '.join(fields)}")
    return {f: overrides.get(f, getattr(config, f)) for f in fields}


def generate_kwargs(g: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`GEN_FIELDS` of :func:`generation_settings`'s result typed as
    ``LlamaForCausalLM.generate`` takes them."""
    return {
        "max_new_tokens": int(g["max_new_tokens"]),
        "do_sample": bool(g["do_sample"]),
        "temperature": float(g["temperature"]),
        "top_k": int(g["top_k"]),
        "top_p": float(g["top_p"]),
        "num_beams": int(g["num_beams"]),
        "repetition_penalty": float(g["repetition_penalty"]),
        "seed": g["seed"],
    }


def model_parts(
    model: Mapping[str, Any] | None,
    dtype: Any = None,
    default_llm: Any = None,
    known: tuple[str, ...] = ("llm", "tokenizer", "vision"),
) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    """``(llm, tokenizer, spec, section)`` from a config's ``model`` section: unknown keys (not in
    ``known``) are a ``ConfigError``; ``tokenizer`` defaults to ``"bundled:ctrg-bpe"``; ``llm`` to
    ``default_llm`` (required when that is None) and is built with ``dtype`` and the
    tokenizer's vocabulary size where the spec leaves it out (:func:`build_llm`); ``spec`` is
    ``{"llm": .., "tokenizer": ..}`` as given (for ``save_pretrained``), ``section`` the section
    as a dict. ``loss_chunk_size`` is always a known key (default ``"auto"``; see
    :func:`build_llm`)."""
    section = dict(model or {})
    known = (*known, "loss_chunk_size")
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ConfigError(f"model: unknown field(s) {unknown}; known: {', '.join(known)}")
    llm_spec = section.get("llm", default_llm)
    if llm_spec is None:
        raise ConfigError("model.llm: required (a HF LLaMA folder or a dict of LlamaConfig fields)")
    tok_spec = section.get("tokenizer", "bundled:ctrg-bpe")
    tok = build_tokenizer(tok_spec)
    llm = build_llm(
        llm_spec,
        dtype=dtype,
        loss_chunk_size=section.get("loss_chunk_size", "auto"),
        vocab_size=tok.vocab_size,
    )
    return llm, tok, {"llm": llm_spec, "tokenizer": tok_spec}, section


def config_from_dict(cls: type, d: Mapping[str, Any], section: str = "recipe") -> Any:
    """``cls(**d)`` for a Config dataclass from a config section (``name`` ignored): unknown
    fields and constructor argument errors are a ``ConfigError`` naming ``section``."""
    import dataclasses

    if not isinstance(d, Mapping):
        raise ConfigError(
            f"{section}: expected a mapping of {cls.__name__} fields, got {type(d).__name__}"
        )
    kw = {k: v for k, v in dict(d).items() if k != "name"}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise ConfigError(
            f"{section}: unknown field(s) {unknown} for {cls.__name__}; known: "
            f"{', '.join(sorted(known))}"
        )
    kw = check_field_types(cls, kw, section)
    try:
        return cls(**kw)
    except TypeError as e:
        raise ConfigError(f"{section}: {e}") from e


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _value_error(tp: Any, v: Any) -> str | None:
    """None when ``v`` fits the annotation ``tp`` as a YAML/JSON config gives it (an int where a
    float is expected, a list for a tuple); otherwise what was expected."""
    import math
    import types
    import typing

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return None
    if origin in (typing.Union, types.UnionType):
        errors = [_value_error(a, v) for a in args]
        if any(e is None for e in errors):
            return None
        return " or ".join(e for e in errors if e)
    if origin is typing.Literal:
        return None if v in args else f"one of {list(args)}"
    if tp is type(None):
        return None if v is None else "null"
    if tp is bool:
        return None if isinstance(v, bool) else "true or false"
    if tp is int:
        return None if isinstance(v, int) and not isinstance(v, bool) else "an integer"
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            hint = " (YAML reads 1e-3 as a string: write 1.0e-3)" if isinstance(v, str) else ""
            return "a number" + hint
        return None if math.isfinite(v) else "a finite number"
    if tp is str:
        return None if isinstance(v, str) else "a string"
    if origin in (list, tuple, collections.abc.Sequence) or tp in (list, tuple):
        if isinstance(v, str) and origin is list and args == (str,):
            return None  # a name the Config expands itself (conditions: ct-rate), or one regex
        if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
            return f"a list ({_type_name(tp)})"
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(v) != len(args):
                return f"a list of {len(args)} items ({_type_name(tp)})"
            items = list(zip(args, v))
        else:
            items = [(args[0], x) for x in v] if args else []
        for a, x in items:
            e = _value_error(a, x)
            if e is not None:
                return f"{_type_name(tp)} whose items are {e}"
        return None
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        if not isinstance(v, Mapping):
            return f"a mapping ({_type_name(tp)})"
        if len(args) == 2:
            for k, x in v.items():
                e = _value_error(args[0], k) or _value_error(args[1], x)
                if e is not None:
                    return f"{_type_name(tp)} whose entries are {e}"
        return None
    return None  # an annotation this check does not know: left to the class


def _yaml_float(tp: Any, v: Any) -> Any:
    """``float(v)`` when ``v`` is a string such as ``"1e-4"`` (PyYAML reads exponent numbers
    without a dot as strings) and the annotation ``tp`` takes a float; else ``v`` unchanged.
    ``TrainingArguments.from_dict`` converts such strings the same way."""
    import math
    import types
    import typing

    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()
    if not isinstance(v, str) or not (tp is float or float in args):
        return v
    try:
        f = float(v.strip())
    except ValueError:
        return v
    return f if math.isfinite(f) else v


def check_field_types(cls: type, kw: Mapping[str, Any], section: str = "recipe") -> dict[str, Any]:
    """``dict(kw)`` checked against the dataclass ``cls``'s annotations, as a YAML/JSON config
    writes values (an int is a float, a list is a tuple, ``"1e-4"`` is a float; ``bool`` is not a
    number): a ``ConfigError`` naming ``section.field``, the expected type and the given value
    for each value that does not fit. Runs before the dataclass's own range checks, which then
    compare values of the right kind."""
    import typing

    out = dict(kw)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: nothing to check by type
        return out
    for k, v in kw.items():
        tp = hints.get(k)
        if tp is None:
            continue
        v = out[k] = _yaml_float(tp, v)
        e = _value_error(tp, v)
        if e is not None:
            raise ConfigError(f"{section}.{k}: expected {e}, got {v!r}")
    return out


def check_kwargs(fn: Any, d: Mapping[str, Any], where: str, also: Any = None) -> dict[str, Any]:
    """``dict(d)`` when every key is a keyword of ``fn`` (a class or function; ``also``: a second
    one whose keywords ``fn`` forwards through ``**kwargs``), else a ConfigError naming
    ``where``, the unknown keys and the known ones."""
    import inspect

    known: set[str] = set()
    for f in (fn, also):
        if f is None:
            continue
        params = inspect.signature(f).parameters.values()
        known |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    known.discard("self")
    unknown = sorted(str(k) for k in d if k not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {', '.join(sorted(known))}")
    return dict(d)


def check_path_spec(spec: Any, where: str, expected: str) -> None:
    """ConfigError unless ``spec`` is a path (str / os.PathLike) or a mapping."""
    if isinstance(spec, Mapping) or (isinstance(spec, (str, os.PathLike)) and str(spec)):
        return
    raise ConfigError(f"{where}: expected {expected}, got {spec!r}")


def check_batch_items(items: Any, where: str) -> None:
    """DataError unless ``items`` (what a DataLoader hands a collator) is a non-empty list of
    records (dicts)."""
    from ..exceptions import DataError

    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
        raise DataError(f"{where}: expected a list of records (dicts), got {type(items).__name__}")
    if not items:
        raise DataError(f"{where}: expected at least one record, got an empty batch")
    for i, it in enumerate(items):
        if not isinstance(it, Mapping):
            raise DataError(f"{where}: item {i}: expected a record (dict), got {type(it).__name__}")


def check_numbers(
    obj: Any,
    positive_ints: tuple[str, ...] = (),
    floats: tuple[str, ...] = (),
    optional_ints: tuple[str, ...] = (),
    ints: tuple[str, ...] = (),
    section: str = "recipe",
) -> None:
    """``ConfigError`` naming the field and its value unless each of ``positive_ints`` is an
    int > 0, each of ``floats`` a real number (int or float), each of ``optional_ints`` an int
    or None and each of ``ints`` an int (``bool`` is not accepted as a number)."""
    for k in positive_ints:
        v = getattr(obj, k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{section}.{k}: expected an integer > 0, got {v!r}")
    for k in floats:
        v = getattr(obj, k)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{section}.{k}: expected a number, got {v!r}")
    for k in optional_ints:
        v = getattr(obj, k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ConfigError(f"{section}.{k}: expected an integer or null, got {v!r}")
    for k in ints:
        v = getattr(obj, k)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{section}.{k}: expected an integer, got {v!r}")


def ensure_synth_data(data: Mapping[str, Any]) -> None:
    """When the ``data`` section has ``synth``, call ``voxlm.synth.ensure(data["root"],
    **data["synth"])``: it generates the miniature dataset, or reuses a matching one already at
    ``root`` (a different dataset there is a ``ConfigError``). The ``synth`` keys are checked
    first against ``ensure``'s parameters and the generator's options (``ConfigError`` naming
    missing / unknown keys)."""
    import inspect

    spec = data.get("synth")
    if not spec:
        return
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"data.synth: expected a mapping (kind, n, seed, layout, ...), got {spec!r}"
        )
    from .. import synth

    params = inspect.signature(synth.ensure).parameters
    named = {
        k
        for k, p in params.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and k != "root"
    }
    required = sorted(k for k in named if params[k].default is inspect.Parameter.empty)
    missing = [k for k in required if k not in spec]
    if missing:
        raise ConfigError(
            f"data.synth: missing key(s) {missing} (voxlm.synth.ensure needs {required}), got "
            f"{dict(spec)}"
        )
    known = set(named)
    gen = getattr(synth, "KINDS", {}).get(
        synth._kind(spec["kind"]) if isinstance(spec["kind"], str) else None
    )
    if gen is not None:  # options ensure passes on to the generator (e.g. shape, wording)
        gp = inspect.signature(gen[0]).parameters
        known |= {
            k
            for k, p in gp.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and k != "out"
        }
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"data.synth: unknown key(s) {unknown}; known: {sorted(known)}")
    if "root" not in data:
        raise ConfigError("data.root: required with data.synth")
    synth.ensure(data["root"], **dict(spec))


def jsonable(v: Any) -> Any:
    """``v`` with numpy arrays / scalars, tuples and non-str keys made JSON-serialisable."""
    import numpy as np

    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def write_eval_outputs(
    output_dir: PathLike,
    metrics: Mapping[str, Any],
    rows: list[Mapping[str, Any]],
    columns: list[str],
) -> pathlib.Path:
    """Write ``output_dir/eval.json`` (``metrics``) and ``output_dir/predictions.csv`` (one row
    per sample, ``columns`` in order; a row's other keys are left out, missing ones empty)."""
    import csv
    import json

    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(jsonable(metrics), indent=2))
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return out


def tokenizer_file(spec: Any) -> tuple[pathlib.Path, dict[str, Any]]:
    """The ``tokenizer.json`` path and special-token settings (from ``tokenizer_config.json``
    next to it) of a ``model.tokenizer`` spec: a bundled name, a tokenizer folder or a
    ``tokenizer.json`` path. ``ConfigError`` for another type, a missing file or invalid JSON."""
    from ..datasets import HERE

    if isinstance(spec, str) and spec in BUNDLED_TOKENIZERS:
        f, bos, eos, pad = BUNDLED_TOKENIZERS[spec]
        return HERE / f, {
            "bos_token": bos,
            "eos_token": eos,
            "pad_token": pad,
            "add_bos_token": True,
        }
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(
            f"model.tokenizer: expected a path or one of {sorted(BUNDLED_TOKENIZERS)}, got {spec!r}"
        )
    p = pathlib.Path(spec)
    if p.is_dir():
        cfg: dict[str, Any] = {}
        if (p / "tokenizer_config.json").is_file():
            raw = read_json(p / "tokenizer_config.json", ConfigError, "model.tokenizer")
            for k in ("bos_token", "eos_token", "pad_token"):
                v = raw.get(k)
                cfg[k] = v.get("content") if isinstance(v, dict) else v
            cfg["add_bos_token"] = bool(raw.get("add_bos_token", False))
            cfg["add_eos_token"] = bool(raw.get("add_eos_token", False))
        p = p / "tokenizer.json"
    else:
        cfg = {}
    if not p.is_file():
        raise ConfigError(f"model.tokenizer: {p} does not exist")
    return p, cfg


def read_json(f: pathlib.Path, error: type[Exception], where: str) -> Any:
    """``json.loads`` of ``f``; ``error`` naming ``where`` and the file when it is not valid
    JSON."""
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{where}: {f} is not valid JSON ({e})") from e

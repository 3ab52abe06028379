"""``voxlm`` command line.

==================================================  ==============================================
``voxlm train CONFIG.yaml [--output-dir D] [--resume]``  train a recipe's stages into one run folder
                                                     (also under ``torchrun --nproc_per_node N``)
``voxlm evaluate RUN_DIR [--out D] [--split S]``     the recipe's evaluation on a split: ``eval``
                                                     (default), ``train``, or ``test``
                                                     (``data.test_split``, default "test")
``voxlm generate RUN_OR_MODEL_DIR [--data D]``        predictions for a split -> predictions.csv
``    [--out D] [--split S]``                        (``--split`` as for evaluate)
``voxlm synth KIND --out DIR [--n N] [--seed S]``    a synthetic dataset in a public layout
``    [--layout L]``                                 (``voxlm.synth.main``, also ``python -m``)
``voxlm info`` / ``voxlm demo``                      versions and build; the bundled demo
==================================================  ==============================================

Errors: voxlm's own (bad config values, data, checkpoints) and the file system's (an output
folder that cannot be written) print one line and exit 1; a ``TypeError`` / ``KeyError`` /
``AttributeError`` while the config is read into the recipe, its arguments or its data prints one
line naming the config section and exits 2. ``voxlm --debug COMMAND ...`` shows the traceback
instead.

A config has the sections ``recipe`` (``name`` + the recipe's Config fields), ``model`` (paths or
specs of the pretrained parts), ``data`` (``format``, ``root``, settings) and ``train``
(:class:`voxlm.train.TrainingArguments` fields). A run folder written by ``voxlm train``::

    RUN/config.yaml            the config as run (output_dir filled in)
    RUN/<stage>/...            one trainer run folder per stage (checkpoints, metrics, final/)
    RUN/model/                 the trained recipe (save_pretrained; from_pretrained loads it)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import pathlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

CONFIG_SECTIONS = ("recipe", "model", "data", "train")
SPLITS = ("eval", "train", "test")


class ConfigSectionError(Exception):
    """A ``TypeError`` / ``KeyError`` / ``AttributeError`` raised while a config section was being
    read (a value of the wrong kind that the code below did not check); :func:`main` prints it as
    one line."""

    def __init__(self, section: str, error: BaseException) -> None:
        super().__init__(f"config section {section!r}: {type(error).__name__}: {error}")
        self.section = section


@contextlib.contextmanager
def _reading(section: str) -> Iterator[None]:
    """Turn a ``TypeError`` / ``KeyError`` / ``AttributeError`` raised while reading ``section``
    into a :class:`ConfigSectionError` naming it (voxlm's own errors pass through)."""
    from .exceptions import VoxlmError

    try:
        yield
    except VoxlmError:
        raise
    except (TypeError, KeyError, AttributeError) as e:
        raise ConfigSectionError(section, e) from e


def _one_line(e: BaseException) -> str:
    """``e``'s message on one line (YAML errors quote the offending line under a caret). An error
    that a DataLoader worker raised carries the worker's traceback in its message (torch's
    ``ExceptionWrapper``): the original error's own line is kept, with the worker named."""
    text = str(e)
    if "\nOriginal Traceback" in text:
        head, _, rest = text.partition("\nOriginal Traceback")
        last = next((ln for ln in reversed(rest.splitlines()) if ln.strip()), "")
        name, sep, msg = last.partition(": ")
        where = head.strip().removeprefix("Caught ").split(" in ", 1)[-1].rstrip(".")
        text = f"{msg if sep and '.' in name else last} ({where})"
    return " ".join(text.split())


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a CLI config (YAML): a mapping with ``recipe.name`` and only the known
    sections."""
    import yaml

    from .exceptions import ConfigError

    p = pathlib.Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({_one_line(e)})") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a text (UTF-8) file ({e})") from e
    if not isinstance(cfg, Mapping):
        raise ConfigError(
            f"{p}: expected a mapping with sections {list(CONFIG_SECTIONS)}, "
            f"got {type(cfg).__name__}"
        )
    unknown = sorted(set(cfg) - set(CONFIG_SECTIONS))
    if unknown:
        raise ConfigError(f"{p}: unknown sections {unknown}; expected {list(CONFIG_SECTIONS)}")
    for s in CONFIG_SECTIONS:
        if cfg.get(s) is not None and not isinstance(cfg[s], Mapping):
            raise ConfigError(f"{p}: section {s!r} must be a mapping, got {type(cfg[s]).__name__}")
    if not isinstance(cfg.get("recipe"), Mapping) or not cfg["recipe"].get("name"):
        raise ConfigError(f"{p}: recipe.name: expected the name of a registered recipe")
    return {s: dict(cfg.get(s) or {}) for s in CONFIG_SECTIONS}


def _rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def train(
    config: str | os.PathLike[str], output_dir: str | None = None, resume: bool = False
) -> pathlib.Path:
    """``voxlm train``: build the recipe, run its stages into the run folder, save the model."""
    import yaml

    from .exceptions import ConfigError
    from .recipes import get_recipe
    from .train import TrainingArguments, run_stages

    cfg = load_config(config)
    with _reading("train"):
        args = TrainingArguments.from_dict(cfg["train"])
        if output_dir is not None:
            args = args.replace(output_dir=output_dir)
    run = pathlib.Path(args.output_dir)
    if (
        (run / "config.yaml").is_file()
        and not resume
        and not args.overwrite_output_dir
        and _rank() == 0
    ):
        raise ConfigError(
            f"output_dir: {run} holds another run (config.yaml); pass --resume to continue it, "
            "set train.overwrite_output_dir: true to replace it, or choose another --output-dir"
        )
    if resume and not (run / "config.yaml").is_file() and _rank() == 0:
        # resume means "continue if there is something to continue" (a run killed before its
        # first checkpoint restarts); say so instead of starting silently
        print(
            f"voxlm train: --resume: {run} holds no run yet; starting from step 0", file=sys.stderr
        )
    with _reading("recipe"):
        cls = get_recipe(cfg["recipe"]["name"])
    with _reading("recipe / model"):
        model = cls.from_config(cfg["recipe"], cfg["model"])
    with _reading("data"):
        train_ds, eval_ds = model.datasets(cfg["data"])
    with _reading("train"):
        stages = model.stages(args)
    if _rank() == 0:
        run.mkdir(parents=True, exist_ok=True)
        saved = {**cfg, "train": {**cfg["train"], "output_dir": os.fspath(run)}}
        (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    results = run_stages(
        model,
        stages,
        train_ds,
        eval_ds,
        data_collator=model.collator(),
        output_dir=run,
        resume=resume,
    )
    after = getattr(
        model, "after_stages", None
    )  # recipe steps outside the trainer (PICG: distillation)
    if callable(after) and _rank() == 0:
        after(train_ds, eval_ds, output_dir=run / "after_stages")
    if _rank() == 0:
        model.save_pretrained(run / "model")
        summary = {
            name: {"global_step": r.global_step, "train_loss": r.training_loss}
            for name, r in results.items()
        }
        print(json.dumps({"run": os.fspath(run), "stages": summary}, indent=2))
    return run


def _model_dir(path: pathlib.Path) -> pathlib.Path:
    from .exceptions import CheckpointError

    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    raise CheckpointError(
        f"{path}: neither a saved recipe (config.json) nor a run folder (model/config.json)"
    )


def _load_model(path: pathlib.Path) -> Any:
    from .exceptions import CheckpointError
    from .recipes import get_recipe

    d = _model_dir(path)
    try:
        saved = json.loads((d / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{d / 'config.json'}: not valid JSON ({e})") from e
    if not isinstance(saved, Mapping):
        raise CheckpointError(
            f"{d / 'config.json'}: expected a JSON object with 'recipe', got {type(saved).__name__}"
        )
    name = saved.get("recipe")
    if not name:
        raise CheckpointError(f"{d}/config.json: no 'recipe' field (not saved by a voxlm recipe)")
    with _reading(f"{d / 'config.json'}"):
        return get_recipe(name).from_pretrained(d)


def _split(model: Any, data: Mapping[str, Any], split: str) -> Any:
    """The dataset of ``split``: ``eval`` / ``train`` from the recipe's ``datasets(data)``;
    ``test`` (``data.test_split``, default "test") from its per-split ``dataset(data, split)``."""
    from .exceptions import ConfigError

    if split not in SPLITS:
        raise ConfigError(f"--split: expected one of {list(SPLITS)}, got {split!r}")
    with _reading("data"):
        if split == "test":
            one = getattr(model, "dataset", None)
            if not callable(one):
                raise ConfigError(
                    f"--split test: the {getattr(model, 'name', type(model).__name__)!r} "
                    "recipe has no "
                    "per-split dataset(data, split) builder; evaluate its eval split (set "
                    "data.eval_split to the test split's name) instead"
                )
            name = data.get("test_split", "test")
            if not isinstance(name, str) or not name:
                raise ConfigError(f"data.test_split: expected a split name, got {name!r}")
            return one(data, name)
        train_ds, eval_ds = model.datasets(data)
    ds = eval_ds if split == "eval" else train_ds
    if ds is None:
        raise ConfigError(
            f"--split {split}: the recipe's datasets() returned no {split} dataset "
            "for this data section"
        )
    return ds


def evaluate(
    run_dir: str | os.PathLike[str], out: str | None = None, split: str = "eval"
) -> dict[str, Any]:
    """``voxlm evaluate``: ``RUN/model`` on the data of ``RUN/config.yaml`` -> eval.json +
    predictions.csv in ``out`` (default ``RUN/eval``)."""
    from .exceptions import ConfigError

    run = pathlib.Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run}: no config.yaml (expected a run folder written by voxlm train)")
    cfg = load_config(run / "config.yaml")
    model = _load_model(run)
    target = pathlib.Path(out) if out else run / "eval"
    metrics = model.evaluate(_split(model, cfg["data"], split), target)
    print(json.dumps({"eval_dir": os.fspath(target), **metrics}, indent=2, default=str))
    return metrics


def generate(
    path: str | os.PathLike[str],
    data: str | None = None,
    out: str | None = None,
    split: str = "eval",
) -> pathlib.Path:
    """``voxlm generate``: the recipe's outputs for a split. ``data`` is a YAML file with a
    ``data:`` section (or the section itself); default: the run's ``config.yaml``. Writes
    ``predictions.csv`` (recipes with ``predict``; otherwise their ``evaluate`` output)."""
    import yaml

    from .exceptions import ConfigError

    p = pathlib.Path(path)
    if data is not None:
        dp = pathlib.Path(data)
        if not dp.is_file():
            raise ConfigError(
                f"--data: {dp} is not a file (expected a YAML config or data section)"
            )
        try:
            d = yaml.safe_load(dp.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"--data: {dp} is not valid YAML ({_one_line(e)})") from e
        section = d.get("data", d) if isinstance(d, Mapping) else None
        if not isinstance(section, Mapping):
            raise ConfigError(f"--data: {dp} holds no mapping (expected a data section)")
    elif (p / "config.yaml").is_file():
        section = load_config(p / "config.yaml")["data"]
    else:
        raise ConfigError(f"{p}: not a run folder with config.yaml; pass --data CONFIG.yaml")
    model = _load_model(p)  # after the data section is read: a bad --data fails at once
    ds = _split(model, section, split)
    target = pathlib.Path(out) if out else (p / "generate")
    target.mkdir(parents=True, exist_ok=True)
    predict = getattr(model, "predict", None)
    if callable(predict):
        rows = predict(ds)
        with (target / "predictions.csv").open("w", newline="") as f:
            cols = list(rows[0]) if rows else ["id"]
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    else:
        model.evaluate(ds, target)
    print(os.fspath(target / "predictions.csv"))
    return target / "predictions.csv"


def synth(argv: Sequence[str]) -> int:
    """``voxlm synth ...``: :func:`voxlm.synth.main` (the same options and behaviour as
    ``python -m voxlm.synth``); argparse's usage errors return their exit code (2)."""
    import importlib

    from .exceptions import ConfigError

    try:
        mod = importlib.import_module(".synth", __package__)
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.synth":
            raise
        raise ConfigError(
            "voxlm synth: the voxlm.synth package is not installed in this build"
        ) from e
    try:
        return int(mod.main(list(argv)) or 0)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return e.code if isinstance(e.code, int) else 1


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--steps -1`` would otherwise mean "train by epochs")."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def main(argv: Sequence[str] | None = None) -> int:
    from .exceptions import VoxlmError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = argv[:1] == ["--debug"]
    rest = argv[1:] if debug else argv
    if rest and rest[0] == "synth":  # voxlm.synth's own command line, options and all
        try:
            return synth(rest[1:])
        except (VoxlmError, OSError) as e:  # OSError: an output folder that cannot be written
            if debug:
                raise
            print(f"voxlm synth: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
            return 1
        except MemoryError as e:  # e.g. --n far beyond what this machine can hold
            if debug:
                raise
            print(
                f"voxlm synth: MemoryError: the requested dataset does not fit in memory ({e})",
                file=sys.stderr,
            )
            return 1
    parser = argparse.ArgumentParser(prog="voxlm", description="voxlm: LLMs on 3D medical scans")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error instead of its one-line message",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print voxlm, torch and CUDA versions, threads and build profile")
    demo = sub.add_parser("demo", help="run voxlm's main job on bundled data")
    demo.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="Dia-LLaMA finetune steps, >= 1 (default: the demo's)",
    )
    demo.add_argument("--out", default="demo_out", help="folder for the demo's outputs")
    demo.add_argument("--no-meteor", action="store_true", help="skip METEOR")
    demo.add_argument(
        "--full",
        action="store_true",
        help="the larger run (240 cases, 400 + 250 steps; tens of minutes on 2 cores) instead of "
        "the default quick one (120 cases, 300 + 120 steps, a few minutes)",
    )
    tr = sub.add_parser(
        "train", help="train a recipe from a YAML config (recipe/model/data/train sections)"
    )
    tr.add_argument("config", help="YAML config file")
    tr.add_argument("--output-dir", default=None, help="run folder (overrides train.output_dir)")
    tr.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    ev = sub.add_parser("evaluate", help="evaluate a run's model on a split (eval, train or test)")
    ev.add_argument("run_dir")
    ev.add_argument(
        "--out", default=None, help="folder for eval.json + predictions.csv (default RUN/eval)"
    )
    ev.add_argument(
        "--split",
        choices=list(SPLITS),
        default="eval",
        help="eval (default), train, or test (data.test_split, default 'test')",
    )
    ge = sub.add_parser("generate", help="write a saved model's predictions for a split")
    ge.add_argument("path", help="run folder or saved model folder")
    ge.add_argument(
        "--data", default=None, help="YAML with a data section (default: the run's config.yaml)"
    )
    ge.add_argument("--out", default=None, help="output folder (default PATH/generate)")
    ge.add_argument(
        "--split",
        choices=list(SPLITS),
        default="eval",
        help="eval (default), train, or test (data.test_split, default 'test')",
    )
    # listed for --help; handled above by voxlm.synth.main (voxlm synth --help shows its options)
    sub.add_parser(
        "synth",
        help="write a synthetic dataset with ground truth in a public layout "
        "(voxlm synth KIND --out DIR [--n N] [--seed S] [--layout L])",
    )
    args = parser.parse_args(argv)

    try:
        if args.command == "info":
            from . import info

            print(info())
        elif args.command == "demo":
            from .demo import run

            run(
                steps=args.steps,
                out=args.out,
                meteor=False if args.no_meteor else None,
                quick=not args.full,
            )
        elif args.command == "train":
            train(args.config, args.output_dir, args.resume)
        elif args.command == "evaluate":
            evaluate(args.run_dir, args.out, args.split)
        elif args.command == "generate":
            generate(args.path, args.data, args.out, args.split)
        else:  # pragma: no cover - argparse refuses other commands
            return 2
    except VoxlmError as e:
        if args.debug:
            raise
        print(f"voxlm {args.command}: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 1
    except ConfigSectionError as e:
        if args.debug:
            raise
        print(f"voxlm {args.command}: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system (an output folder that cannot be made or written)
        if args.debug:
            raise
        print(f"voxlm {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0

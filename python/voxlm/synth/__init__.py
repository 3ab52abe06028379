"""Synthetic datasets with ground truth, written in the public layouts voxlm's readers read.

* :func:`chest_ct` — chest CT with planted findings for the 14 CheXbert labels (real CTRG-Chest
  label prevalence), template reports; layouts ``ctrg-chest`` and ``ct-rate``.
* :func:`prostate_mri` — T2W / ADC / DWI with a lesion whose PI-RADS-like score follows
  guideline rules; layouts ``picai`` (.mha + marksheet + masks) and ``prostate-biopsy``
  (PICG crops + split lines).
* :func:`chest_xray` — 2-D PA + lateral studies with Findings / Impression; layout ``mimic-cxr``.
* :func:`ensure` — generate a dataset once (safe when two processes race for it).

Everything is seeded and deterministic: the same ``(kind, n, seed, layout, size)`` writes the
same files. Ground truth sits in ``<root>/ground_truth/``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Sequence
from typing import Any

from ..exceptions import ConfigError
from .chest_ct import chest_ct
from .chest_xray import chest_xray
from .prostate_mri import prostate_mri
from .reports import label_report, label_reports
from .writers import PathLike

KINDS = {
    "chest-ct": (chest_ct, "ctrg-chest"),
    "prostate-mri": (prostate_mri, "picai"),
    "chest-xray": (chest_xray, "mimic-cxr"),
}
_ALIASES = {
    "chest_ct": "chest-ct",
    "ct": "chest-ct",
    "prostate_mri": "prostate-mri",
    "mri": "prostate-mri",
    "chest_xray": "chest-xray",
    "cxr": "chest-xray",
    "xray": "chest-xray",
}


def _kind(kind: str) -> str:
    k = _ALIASES.get(kind, kind)
    if k not in KINDS:
        raise ConfigError(f"synth kind: expected one of {sorted(KINDS)}, got {kind!r}")
    return k


def ensure(
    root: PathLike, kind: str, n: int, seed: int = 0, layout: str | None = None, **options: Any
) -> pathlib.Path:
    """Generate ``n`` cases of ``kind`` under ``root`` unless a dataset is already there.

    An existing dataset is reused when its ``synth.json`` records the same kind, layout, n and
    seed; a different one there is an error (``ConfigError``), never silently mixed. Generation
    goes into a temporary sibling folder renamed into place, so concurrent callers are safe.
    """
    k = _kind(kind)
    fn, default_layout = KINDS[k]
    layout = layout or default_layout
    root = pathlib.Path(root)
    marker = root / "synth.json"
    if marker.is_file():
        have = json.loads(marker.read_text())
        want = {"kind": k, "layout": layout, "n": int(n), "seed": int(seed)}
        for key, v in options.items():  # options the generator recorded must agree too
            if key in have and v is not None:
                want[key] = (
                    list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, dict) else v)
                )
        got = {key: have.get(key) for key in want}
        if got != want:
            raise ConfigError(
                f"synth.ensure: {root} holds a different synthetic dataset {got}, wanted {want}"
            )
        return root
    if root.exists() and any(root.iterdir()):
        raise ConfigError(
            f"synth.ensure: {root} exists, is not empty and is not a voxlm synthetic dataset"
        )
    try:
        return fn(root, int(n), seed=int(seed), layout=layout, **options)
    except ConfigError:
        if marker.is_file():  # another process finished first
            return root
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """``voxlm synth <kind> --out DIR --n N [--seed S] [--layout L]``."""
    p = argparse.ArgumentParser(
        prog="voxlm synth", description="write a synthetic dataset with ground truth"
    )
    p.add_argument("kind", choices=sorted(KINDS) + sorted(_ALIASES))
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", default=None)
    a = p.parse_args(argv)
    root = ensure(a.out, a.kind, a.n, seed=a.seed, layout=a.layout)
    print(root)
    return 0


__all__ = [
    "KINDS",
    "chest_ct",
    "chest_xray",
    "ensure",
    "label_report",
    "label_reports",
    "main",
    "prostate_mri",
]

"""Synthetic chest CT with planted findings, ground truth and reports.

A case is an int16 HU volume in nibabel axis order ``[X, Y, Z]`` with a diagonal RAS affine
(voxel i -> patient right, j -> anterior, k -> superior). Anatomy: air outside, subcutaneous
fat (-100 HU), muscle (45), ribs (650) and sternum, spine (300 cancellous, cortex 800), the
thoracic cavity, mediastinal fat (-80), two lungs (-860 with smooth texture) under domed
diaphragms, heart (40), ascending/descending aorta and SVC (45), trachea (air).

Findings are planted only for labels whose sampled CheXbert code is 1, using the labels'
joint distribution of the real CTRG-Chest table (each case takes the codes of a row drawn at
random from ``ctrg_finding_labels.csv``, read at generation time; "no finding" is then 1 exactly
when no other label is positive):

=========================== ==================================================================
enlarged cardiomediastinum  1-3 enlarged lymph nodes (40 HU, short axis 12-25 mm), hilar or
                            mediastinal (paratracheal, subcarinal, aortopulmonary window)
cardiomegaly                heart radii x1.30-1.45
lung opacity                ground-glass patch (-520 HU, 15-35 mm radius) in a lobe
lung lesion                 solid / part-solid / calcified nodule 6-20 mm (1-3 of them) or a
                            mass 30-50 mm, in a lobe/segment
edema                       both lungs denser (+260 HU, more posteriorly, dependent)
consolidation               lobar patch (30 HU, 20-40 mm) with an air bronchogram
pneumonia                   consolidation core inside a ground-glass rim
atelectasis                 flattened band (40 HU) at a lower-lobe base, posterior
pneumothorax                lung shrunk by 20-40 %, a rim of air (-1000) without texture
pleural effusion            dependent fluid (12 HU) at the posterior base, small/moderate/large
pleural other               pleural thickening: a 5-10 mm soft-tissue rim (45 HU), one side
fracture                    a gap (+ a shifted fragment) in one rib
support devices             central venous catheter (1500 HU) or pacemaker + lead (3000 HU)
=========================== ==================================================================

Ground truth per case: the label codes, the findings (label, side, lobe, segment, centre
voxel, size in mm, kind) and a uint8 mask (label index + 1 per voxel, 0 elsewhere).
"""

from __future__ import annotations

import csv
import functools
import json
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..exceptions import ConfigError
from . import reports as R
from .writers import PathLike, atomic_dir, check_size, write_csv, write_nifti

CONDITIONS = R.CONDITIONS
FOV_MM = (360.0, 300.0, 300.0)  # x (left-right), y (posterior-anterior), z (inferior-superior)


@functools.lru_cache(maxsize=2)
def real_label_table(path: str | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """CheXbert codes of the real CTRG-Chest cases ``[N, 14]`` (0/1/2/3) and the CSV's column
    names, read from the bundled ``ctrg_finding_labels.csv`` (or ``path``)."""
    from ..datasets import HERE

    f = pathlib.Path(path) if path else HERE / "ctrg_finding_labels.csv"
    with open(f, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    codes = np.asarray([[int(v) for v in r[1:]] for r in rows[1:]], dtype=np.int64)
    return codes, tuple(rows[0][1:])


def sample_codes(
    rng: np.random.Generator, n: int, prevalence: Mapping[str, float] | None = None
) -> np.ndarray:
    """``[n, 14]`` CheXbert codes: rows of the real table drawn with replacement (so each label's
    prevalence and the co-occurrences are the real ones), "no finding" made consistent (1 iff
    nothing else is positive). ``prevalence`` overrides chosen labels with independent
    Bernoulli draws (code 1 with that probability, else 2)."""
    table, _ = real_label_table()
    codes = table[rng.integers(0, len(table), size=n)].copy()
    for name, p in (prevalence or {}).items():
        if name not in R.IDX:
            raise ConfigError(
                f"prevalence: unknown label {name!r}; expected one of {list(CONDITIONS)}"
            )
        codes[:, R.IDX[name]] = np.where(rng.random(n) < float(p), 1, 2)
    nf = R.IDX["no finding"]
    positive = (codes[:, :nf] == 1).any(1)
    codes[:, nf] = np.where(positive, 0, 1)
    return codes


@dataclass
class Case:
    """One synthetic chest CT."""

    id: int
    hu: np.ndarray  # [X, Y, Z] int16 HU
    affine: np.ndarray  # 4x4 RAS
    mask: np.ndarray  # [X, Y, Z] uint8, label index + 1
    codes: np.ndarray  # [14] CheXbert codes
    findings: list[dict[str, Any]]
    report: str
    spacing: tuple[float, float, float] = field(default=(1.0, 1.0, 1.0))

    @property
    def labels(self) -> np.ndarray:
        return (self.codes == 1).astype(np.int64)


class _Grid:
    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape = shape
        self.spacing = tuple(f / s for f, s in zip(FOV_MM, shape))
        ax = [np.linspace(-1 + 1 / s, 1 - 1 / s, s) for s in shape]
        self.u = ax[0][:, None, None]
        self.v = ax[1][None, :, None]
        self.w = ax[2][None, None, :]
        self.half = tuple(f / 2 for f in FOV_MM)

    def mm(self, a: float, axis: int) -> float:
        """Normalised length -> mm along an axis."""
        return a * self.half[axis]

    def norm(self, mm: float, axis: int) -> float:
        return mm / self.half[axis]

    def ellipsoid(self, c: Sequence[float], r: Sequence[float]) -> np.ndarray:
        """Boolean [X, Y, Z] mask of an axis-aligned ellipsoid, centre and radii normalised."""
        return (
            ((self.u - c[0]) / r[0]) ** 2
            + ((self.v - c[1]) / r[1]) ** 2
            + ((self.w - c[2]) / r[2]) ** 2
        ) < 1

    def ellipsoid_mm(self, c: Sequence[float], r_mm: Sequence[float]) -> np.ndarray:
        return self.ellipsoid(c, [self.norm(r_mm[i], i) for i in range(3)])

    def voxel(self, c: Sequence[float]) -> list[int]:
        return [
            int(np.clip(round((c[i] + 1) / 2 * self.shape[i] - 0.5), 0, self.shape[i] - 1))
            for i in range(3)
        ]

    def tube(self, p0: Sequence[float], p1: Sequence[float], radius_mm: float) -> np.ndarray:
        """Voxels within ``radius_mm`` of the segment p0-p1 (normalised coordinates)."""
        h = np.asarray(self.half)
        a, b = np.asarray(p0) * h, np.asarray(p1) * h
        d = b - a
        x, y, z = self.u * h[0], self.v * h[1], self.w * h[2]
        t = ((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / max(float(d @ d), 1e-9)
        t = np.clip(t, 0, 1)
        return (x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2 + (
            z - a[2] - t * d[2]
        ) ** 2 < radius_mm**2


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], cell: int = 6
) -> np.ndarray:
    """A smooth random field in [-1, 1] (coarse Gaussian noise, trilinearly upsampled)."""
    coarse = [max(s // cell, 2) + 1 for s in shape]
    g = rng.standard_normal(coarse)
    for axis, s in enumerate(shape):
        pos = np.linspace(0, coarse[axis] - 1, s)
        lo = np.floor(pos).astype(int).clip(0, coarse[axis] - 2)
        t = (pos - lo).reshape([-1 if i == axis else 1 for i in range(3)])
        g = np.take(g, lo, axis=axis) * (1 - t) + np.take(g, lo + 1, axis=axis) * t
    return np.clip(g / 2, -1, 1)


LOBES = (
    ("right", "upper"),
    ("right", "middle"),
    ("right", "lower"),
    ("left", "upper"),
    ("left", "lower"),
)
LOBE_WEIGHTS = (0.3, 0.1, 0.25, 0.2, 0.15)


class _Anatomy:
    """The normal chest of one case: tissue volume plus the masks findings are placed in."""

    def __init__(self, g: _Grid, rng: np.random.Generator, heart_scale: float) -> None:
        self.g = g
        u, v, w = g.u, g.v, g.w
        body_r = (0.93 + rng.uniform(-0.03, 0.03), 0.74 + rng.uniform(-0.03, 0.03))
        body = (u / body_r[0]) ** 2 + (v / body_r[1]) ** 2 < 1
        muscle = (u / (body_r[0] - 0.06)) ** 2 + (v / (body_r[1] - 0.06)) ** 2 < 1
        cav_r = (body_r[0] - 0.13, body_r[1] - 0.13)
        cavity = (u / cav_r[0]) ** 2 + ((v + 0.02) / cav_r[1]) ** 2 < 1
        hu = np.full(g.shape, -1000.0, dtype=np.float32)
        hu[np.broadcast_to(body, g.shape)] = -100
        hu[np.broadcast_to(muscle, g.shape)] = 45
        cavity3 = np.broadcast_to(cavity, g.shape)
        hu[cavity3] = 35
        # ribs: 10 slabs on a ring between the cavity and the muscle
        ring = (
            ((u / (cav_r[0] + 0.05)) ** 2 + ((v + 0.02) / (cav_r[1] + 0.05)) ** 2 < 1)
            & ~cavity
            & (v > -0.5)
        )
        self.rib_levels = [0.85 - 0.17 * k for k in range(10)]
        self.ribs = np.zeros(g.shape, dtype=bool)
        for wl in self.rib_levels:
            self.ribs |= ring & (np.abs(w - wl) < 0.035)
        hu[self.ribs] = 650
        hu[
            np.broadcast_to(
                (np.abs(u) < 0.06) & (v > cav_r[1] - 0.02) & (v < cav_r[1] + 0.06), g.shape
            )
        ] = 500
        spine = (u / 0.12) ** 2 + ((v + 0.52) / 0.11) ** 2 < 1
        cortex = spine & ~((u / 0.10) ** 2 + ((v + 0.52) / 0.09) ** 2 < 1)
        hu[np.broadcast_to(spine, g.shape)] = 300
        hu[np.broadcast_to(cortex, g.shape)] = 800
        hu[np.broadcast_to((u / 0.045) ** 2 + ((v + 0.70) / 0.045) ** 2 < 1, g.shape)] = 20
        self.cavity = cavity3
        # lungs under domed diaphragms, tapering to the apex
        self.lung = {}
        for side, cu in (("right", 0.37), ("left", -0.37)):
            ru, rv, cv = 0.31 + rng.uniform(-0.02, 0.02), 0.47, -0.02
            s = np.sqrt(np.clip(1 - (w / 0.95) ** 2, 0, 1)) * (1.0 - 0.25 * np.clip(w, 0, 1))
            rn = ((u - cu) / (ru * s + 1e-6)) ** 2 + ((v - cv) / (rv * s + 1e-6)) ** 2
            base = -0.78 + (0.07 if side == "right" else 0.0) + 0.25 * (1 - np.clip(rn, 0, 1))
            lung = (rn < 1) & (w > base) & (w < 0.93) & cavity3
            self.lung[side] = lung
            setattr(self, f"rn_{side}", rn)
            setattr(self, f"geom_{side}", (cu, cv, ru, rv))
        # mediastinum (fat), heart and vessels cut out of the lungs
        self.heart_c = (-0.12 + rng.uniform(-0.02, 0.02), 0.16, -0.42)
        self.heart_r = tuple(r * heart_scale for r in (0.27, 0.25, 0.30))
        self.heart = g.ellipsoid(self.heart_c, self.heart_r) & cavity3
        medi = (
            np.broadcast_to((np.abs(u + 0.03) < 0.17) & (v > -0.42) & (w > -0.25), g.shape)
            & cavity3
        )
        vessels = (
            g.tube((-0.02, 0.12, -0.3), (-0.02, 0.12, 0.55), 0.075 * g.half[0])
            | g.tube((-0.02, 0.12, 0.55), (-0.12, -0.36, 0.55), 0.07 * g.half[0])
            | g.tube((-0.12, -0.36, 0.55), (-0.12, -0.36, -1.0), 0.065 * g.half[0])
            | g.tube((0.12, 0.12, -0.25), (0.12, 0.12, 0.85), 0.045 * g.half[0])
        )
        self.trachea = g.tube((0.0, -0.12, 0.25), (0.0, -0.12, 1.0), 0.055 * g.half[0])
        self.solid = self.heart | medi | vessels | self.trachea | np.broadcast_to(spine, g.shape)
        for side in self.lung:
            self.lung[side] &= ~self.solid
        texture = _smooth_noise(rng, g.shape, cell=4)
        self.lung_hu = (-860 + 35 * texture).astype(np.float32)
        hu[medi] = -80
        for side in self.lung:
            hu[self.lung[side]] = self.lung_hu[self.lung[side]]
        self.hu = hu
        self.medi, self.vessels = medi, vessels

    def draw_heart_and_vessels(self) -> None:
        hu = self.hu
        hu[self.heart] = 40
        hu[self.vessels] = 45
        hu[self.trachea] = -1000

    def lobe_mask(self, side: str, lobe: str) -> np.ndarray:
        w, v = self.g.w, self.g.v
        lung = self.lung[side]
        if side == "right":
            sel = {
                "upper": w > 0.25,
                "middle": (w <= 0.25) & (w > -0.3) & (v > 0.0),
                "lower": (w <= 0.25) & ~((w > -0.3) & (v > 0.0)),
            }[lobe]
        else:
            sel = {"upper": w > -0.05, "lower": w <= -0.05}[lobe]
        return lung & sel

    def pick_point(
        self, rng: np.random.Generator, mask: np.ndarray, margin_mm: float = 0.0
    ) -> tuple[float, ...]:
        """A random point (normalised coordinates) inside ``mask``, preferring ones at least
        ``margin_mm`` from its edge (an erosion by whole voxels)."""
        m = mask
        steps = [int(margin_mm // s) for s in self.g.spacing]
        if any(steps):
            er = m.copy()
            for axis, k in enumerate(steps):
                for sh in range(1, k + 1):
                    er &= np.roll(m, sh, axis) & np.roll(m, -sh, axis)
            if er.any():
                m = er
        idx = np.flatnonzero(m)
        if not len(idx):
            idx = np.flatnonzero(self.lung["right"] | self.lung["left"])
        i = np.unravel_index(int(idx[rng.integers(len(idx))]), self.g.shape)
        return tuple(-1 + (2 * i[a] + 1) / self.g.shape[a] for a in range(3))


def _plant(
    an: _Anatomy, rng: np.random.Generator, codes: np.ndarray
) -> tuple[list[dict[str, Any]], np.ndarray]:
    g, hu = an.g, an.hu
    mask = np.zeros(g.shape, dtype=np.uint8)
    findings: list[dict[str, Any]] = []
    pos = {c: bool(codes[i] == 1) for i, c in enumerate(CONDITIONS)}

    def lobe() -> tuple[str, str]:
        return LOBES[int(rng.choice(len(LOBES), p=LOBE_WEIGHTS))]

    def mark(m: np.ndarray, label: str) -> None:
        mask[m] = R.IDX[label] + 1

    def rec(label: str, m: np.ndarray, c: Sequence[float], **kw: Any) -> None:
        findings.append({"label": label, "center_voxel": g.voxel(c), "voxels": int(m.sum()), **kw})

    lungs = an.lung["right"] | an.lung["left"]
    if pos["pneumothorax"]:
        side = str(rng.choice(["right", "left"]))
        cu, cv, ru, rv = getattr(an, f"geom_{side}")
        frac = float(rng.uniform(0.2, 0.4))
        shrunk = an.lung[side] & (getattr(an, f"rn_{side}") < (1 - frac) ** 2)
        air = an.lung[side] & ~shrunk
        hu[air] = -1000
        hu[shrunk] = an.lung_hu[shrunk] + 60
        an.lung[side] = shrunk
        mark(air, "pneumothorax")
        rec(
            "pneumothorax",
            air,
            an.pick_point(rng, air),
            side=side,
            compression_pct=int(round(100 * frac, -1)),
        )
        lungs = an.lung["right"] | an.lung["left"]
    if pos["edema"]:
        boost = (260 + 120 * np.clip(-g.v, 0, 1)).astype(np.float32)
        hu[lungs] = (an.lung_hu + np.broadcast_to(boost, g.shape))[lungs]
        mark(lungs, "edema")
        rec("edema", lungs, an.pick_point(rng, lungs), side="both")
    if pos["lung opacity"]:
        side, lb = lobe()
        c = an.pick_point(rng, an.lobe_mask(side, lb), 10)
        r = float(rng.uniform(15, 35))
        m = g.ellipsoid_mm(c, (r, r * rng.uniform(0.6, 1.0), r * rng.uniform(0.6, 1.0))) & lungs
        hu[m] = -520 + 40 * _smooth_noise(rng, g.shape, 3)[m]
        mark(m, "lung opacity")
        rec("lung opacity", m, c, side=side, lobe=lb, size_mm=[2 * r, 2 * r])
    for label in ("consolidation", "pneumonia"):
        if pos[label]:
            side, lb = lobe()
            c = an.pick_point(rng, an.lobe_mask(side, lb), 10)
            r = float(rng.uniform(20, 40))
            m = g.ellipsoid_mm(c, (r, r * 0.8, r)) & lungs
            if label == "pneumonia":
                rim = g.ellipsoid_mm(c, (r * 1.4, r * 1.1, r * 1.4)) & lungs & ~m
                hu[rim] = -500
                mark(rim, label)
            hu[m] = 30
            bron = (
                g.tube((c[0], c[1], c[2] - g.norm(r, 2)), (c[0], c[1], c[2] + g.norm(r, 2)), 1.5)
                & m
            )
            hu[bron] = -900
            mark(m, label)
            rec(label, m, c, side=side, lobe=lb, size_mm=[2 * r, 1.6 * r])
    if pos["atelectasis"]:
        side = str(rng.choice(["right", "left"]))
        lm = an.lobe_mask(side, "lower")
        c = an.pick_point(rng, lm & (g.v < -0.1), 8)
        m = (
            g.ellipsoid_mm(
                c,
                (float(rng.uniform(25, 40)), float(rng.uniform(7, 12)), float(rng.uniform(15, 25))),
            )
            & lungs
        )
        hu[m] = 40
        mark(m, "atelectasis")
        rec(
            "atelectasis",
            m,
            c,
            side=side,
            lobe="lower",
            size_mm=[float(m.sum() ** (1 / 3) * g.spacing[0])] * 2,
        )
    if pos["lung lesion"]:
        side, lb = lobe()
        seg = str(rng.choice(R.SEGMENTS[(side, lb)])) if rng.random() < 0.5 else None
        if rng.random() < 0.15:
            kind, count = "mass", 1
            d = float(rng.uniform(30, 50))
        else:
            kind = str(rng.choice(["solid", "solid", "part-solid", "calcified"]))
            count = int(rng.choice([1, 1, 2, 3]))
            d = float(rng.uniform(6, 20))
        c = an.pick_point(rng, an.lobe_mask(side, lb), d / 2)
        b = d * float(rng.uniform(0.7, 1.0))
        m = g.ellipsoid_mm(c, (d / 2, b / 2, d / 2)) & (lungs | an.cavity)
        val = {"solid": 35, "mass": 40, "part-solid": -250, "calcified": 400}[kind]
        hu[m] = val
        mark(m, "lung lesion")
        rec(
            "lung lesion",
            m,
            c,
            side=side,
            lobe=lb,
            segment=seg,
            kind=kind,
            count=count,
            size_mm=[d, b],
        )
        for _ in range(count - 1):  # smaller satellites anywhere in the lungs
            c2 = an.pick_point(rng, lungs, 4)
            d2 = float(rng.uniform(5, d))
            m2 = g.ellipsoid_mm(c2, (d2 / 2,) * 3) & lungs
            hu[m2] = val
            mark(m2, "lung lesion")
            findings[-1].setdefault("satellites", []).append(
                {"center_voxel": g.voxel(c2), "size_mm": [d2, d2]}
            )
    if pos["pleural effusion"]:
        side = str(rng.choice(["right", "left", "both"], p=[0.45, 0.3, 0.25]))
        amount = str(rng.choice(["small", "moderate", "large"], p=[0.5, 0.35, 0.15]))
        a = {"small": 0.3, "moderate": 0.5, "large": 0.75}[amount]
        total = np.zeros(g.shape, dtype=bool)
        for s in ["right", "left"] if side == "both" else [side]:
            cu, cv, ru, rv = getattr(an, f"geom_{s}")
            depth = (g.v - cv) / rv  # -1 posterior .. 1 anterior
            m = an.lung[s] & (depth < -1 + 2 * a * np.clip((0.15 - g.w) / 0.9, 0, 1))
            hu[m] = 12
            total |= m
        mark(total, "pleural effusion")
        rec(
            "pleural effusion",
            total,
            an.pick_point(rng, total) if total.any() else (0.3, -0.4, -0.6),
            side=side,
            amount=amount,
        )
    if pos["pleural other"]:
        side = str(rng.choice(["right", "left", "both"], p=[0.4, 0.35, 0.25]))
        t_mm = float(rng.uniform(5, 10))
        total = np.zeros(g.shape, dtype=bool)
        for s in ["right", "left"] if side == "both" else [side]:
            cu, cv, ru, rv = getattr(an, f"geom_{s}")
            rn = getattr(an, f"rn_{s}")
            t = g.norm(t_mm, 0) / ru
            m = an.lung[s] & (rn > (1 - t) ** 2) & (g.w < 0.5) & (g.v < 0.3)
            hu[m] = 45
            total |= m
        mark(total, "pleural other")
        rec(
            "pleural other",
            total,
            an.pick_point(rng, total) if total.any() else (0.6, -0.2, 0.0),
            side=side,
            thickness_mm=t_mm,
        )
    an.draw_heart_and_vessels()
    if pos["cardiomegaly"]:
        mark(an.heart, "cardiomegaly")
        rec(
            "cardiomegaly",
            an.heart,
            an.heart_c,
            side="left",
            size_mm=[2 * g.mm(an.heart_r[0], 0), 2 * g.mm(an.heart_r[1], 1)],
        )
    if pos["enlarged cardiomediastinum"]:
        sites = {
            "paratracheal": ((0.1, -0.05, 0.45), "mediastinum"),
            "subcarinal": ((0.0, -0.22, 0.15), "mediastinum"),
            "aortopulmonary": ((-0.12, 0.0, 0.32), "mediastinum"),
            "right hilum": ((0.22, -0.05, 0.05), "hilum"),
            "left hilum": ((-0.23, -0.05, 0.05), "hilum"),
        }
        names = list(sites)
        chosen = rng.choice(len(names), size=int(rng.integers(1, 4)), replace=False)
        total = np.zeros(g.shape, dtype=bool)
        largest = 0.0
        for k in sorted(chosen):
            c, _ = sites[names[k]]
            d = float(rng.uniform(12, 25))
            largest = max(largest, d)
            m = g.ellipsoid_mm(c, (d / 2, d / 2, d * 0.6)) & an.cavity
            hu[m] = 40
            total |= m
        where = "hilum" if all(sites[names[k]][1] == "hilum" for k in chosen) else "mediastinum"
        hil_sides = {names[k].split()[0] for k in chosen if sites[names[k]][1] == "hilum"}
        side = "both" if len(hil_sides) != 1 else hil_sides.pop()
        mark(total, "enlarged cardiomediastinum")
        rec(
            "enlarged cardiomediastinum",
            total,
            sites[names[int(sorted(chosen)[0])]][0],
            where=where,
            side=side,
            sites=[names[k] for k in sorted(chosen)],
            size_mm=[largest, largest],
        )
    if pos["fracture"]:
        side = str(rng.choice(["right", "left"]))
        k = int(rng.integers(3, 10))
        wl = an.rib_levels[k - 1]
        lateral = (g.u > 0.5) if side == "right" else (g.u < -0.5)
        gap = (
            an.ribs
            & lateral
            & (np.abs(g.v - rng.uniform(-0.1, 0.2)) < 0.05)
            & (np.abs(g.w - wl) < 0.04)
        )
        hu[gap] = 45
        frag = np.roll(gap, 1, axis=2) & ~an.cavity
        hu[frag] = 650
        mark(gap | frag, "fracture")
        c = an.pick_point(rng, gap) if gap.any() else ((0.8 if side == "right" else -0.8), 0.0, wl)
        rec("fracture", gap | frag, c, side=side, rib=k)
    if pos["support devices"]:
        if rng.random() < 0.7:
            m = g.tube((0.55, 0.1, 0.85), (0.12, 0.12, 0.62), 2.0) | g.tube(
                (0.12, 0.12, 0.62), (0.12, 0.12, -0.05), 2.0
            )
            hu[m] = 1500
            kind, c = "catheter", an.pick_point(rng, m)
        else:
            box = (
                (np.abs(g.u + 0.55) < g.norm(20, 0))
                & (np.abs(g.v - 0.58) < g.norm(6, 1))
                & (np.abs(g.w - 0.6) < g.norm(25, 2))
            )
            m = (
                box
                | g.tube((-0.55, 0.58, 0.6), (0.12, 0.12, 0.62), 1.5)
                | g.tube((0.12, 0.12, 0.62), (-0.05, 0.2, -0.4), 1.5)
            )
            hu[m] = 3000
            kind, c = "pacemaker", an.pick_point(rng, box & np.ones(g.shape, dtype=bool))
        mark(m, "support devices")
        rec("support devices", m, c, kind=kind)
    for f in findings:  # what is left of each finding after later ones were drawn over it
        f["voxels"] = int((mask == R.IDX[f["label"]] + 1).sum())
    return findings, mask


def generate_case(
    case_id: int,
    codes: np.ndarray,
    seed: int = 0,
    shape: tuple[int, int, int] = (64, 64, 32),
    wording: str = "varied",
) -> Case:
    """One case with the given CheXbert ``codes`` ([14]); deterministic in ``(seed, case_id)``.

    Args:
        shape: voxels ``(X, Y, Z)`` over a 360 x 300 x 300 mm field of view.
    """
    rng = np.random.default_rng([int(seed), int(case_id), 17])
    g = _Grid(tuple(int(s) for s in shape))
    heart_scale = (
        float(rng.uniform(1.30, 1.45))
        if codes[R.IDX["cardiomegaly"]] == 1
        else float(rng.uniform(0.92, 1.05))
    )
    an = _Anatomy(g, rng, heart_scale)
    findings, mask = _plant(an, rng, codes)
    hu = an.hu + rng.normal(0, 12, g.shape).astype(np.float32)
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    affine = np.diag([*g.spacing, 1.0])
    affine[:3, 3] = [-(FOV_MM[i] - g.spacing[i]) / 2 for i in range(3)]
    report = R.chest_ct_report(rng, codes, findings, wording=wording)
    return Case(
        case_id, hu, affine, mask, np.asarray(codes, dtype=np.int64), findings, report, g.spacing
    )


def _splits(rng: np.random.Generator, n: int, fractions: Sequence[float]) -> list[int]:
    """Split index per case (0, 1, 2), a shuffled partition with the given fractions, every part
    non-empty once n >= 3."""
    order = rng.permutation(n)
    counts = [int(round(f * n)) for f in fractions]
    if n >= len(fractions):
        for i in range(len(counts)):
            counts[i] = max(counts[i], 1)
    counts[0] = n - sum(counts[1:])
    out = [0] * n
    start = 0
    for s, c in enumerate(counts):
        for j in order[start : start + c]:
            out[int(j)] = s
        start += c
    return out


def chest_ct(
    out: PathLike,
    n: int,
    seed: int = 0,
    layout: str = "ctrg-chest",
    shape: tuple[int, int, int] = (64, 64, 32),
    prevalence: Mapping[str, float] | None = None,
    wording: str = "varied",
    dicom_every: int = 0,
) -> pathlib.Path:
    """Write ``n`` synthetic chest CTs in a public layout under ``out`` (created; must not
    exist or be empty) and return ``out``.

    Layouts:
        ``"ctrg-chest"`` (as Dia-LLaMA reads CTRG-Chest-548K): ``annotation.json`` =
        ``{"train"|"val"|"test": [{"id": int, "finding": str}]}`` (70/10/20 %),
        ``CTRG_finding_labels.csv`` (id + 14 codes 0/1/2/3), ``CTRG-Chest-548K_volume/<id>.nii.gz``
        (int16 HU).
        ``"ct-rate"``:
        ``dataset/{train,valid}/<split>_<pid>/<split>_<pid>_a/<split>_<pid>_a_1.nii.gz``
        (80/20 %) with raw stored values ``x = HU + 1024`` (``RescaleSlope`` 1, ``RescaleIntercept``
        -1024 in ``metadata/{train,validation}_metadata.csv``, as CT-CLIP reads them),
        ``radiology_text_reports/{train,validation}_reports.csv`` and
        ``multi_abnormality_labels/{train,valid}_predicted_labels.csv`` (the 18 CT-RATE columns,
        see :data:`CT_RATE_MAP`).
        ``"m3d"`` (M3D-Cap + M3D-VQA, 70/10/20 %): ``npy/<id>.npy`` float32 ``[1, Z, Y, X]`` in
        [0, 1], ``text/<id>.txt``, ``M3D_Cap.json`` and ``M3D-VQA/M3D_VQA_{train,val,test}.csv``
        with closed-ended questions from the planted findings (:mod:`voxlm.synth.vqa`).

    All also hold ``ground_truth/<id>.json`` (codes, labels, findings, report) and
    ``ground_truth/<id>_mask.nii.gz`` (uint8 label index + 1). ``dicom_every=k`` additionally
    writes every k-th case as a DICOM CT series under ``dicom/<id>/`` (explicit VR LE).
    """
    if layout not in ("ctrg-chest", "ct-rate", "m3d"):
        raise ConfigError(
            f"chest_ct layout: expected 'ctrg-chest', 'ct-rate' or 'm3d', got {layout!r}"
        )
    n, shape = check_size("chest_ct", n, shape, out, bytes_per_voxel=0.5, volumes=1)
    out = pathlib.Path(out)
    rng = np.random.default_rng([int(seed), 1])
    codes = sample_codes(rng, n, prevalence)
    split_fracs = (0.8, 0.2) if layout == "ct-rate" else (0.7, 0.1, 0.2)
    split = _splits(rng, n, split_fracs)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"chest_ct: {out} exists and is not empty")
    with atomic_dir(out) as tmp:
        cases = []
        for i in range(n):
            case = generate_case(i, codes[i], seed=seed, shape=shape, wording=wording)
            cases.append(case)
            _write_truth(tmp, str(i), case, split[i], layout)
            if dicom_every and i % dicom_every == 0:
                from .writers import write_dicom_series

                sp = case.spacing
                # DICOM LPS: rows along y (posterior->anterior flipped), columns along x
                arr = np.ascontiguousarray(case.hu.transpose(2, 1, 0)[:, ::-1, ::-1]) + 1024
                origin = (
                    -case.affine[0, 3] - (case.hu.shape[0] - 1) * sp[0],
                    -case.affine[1, 3] - (case.hu.shape[1] - 1) * sp[1],
                    case.affine[2, 3],
                )
                write_dicom_series(
                    tmp / "dicom" / str(i),
                    arr,
                    sp,
                    origin,
                    "CT",
                    1.0,
                    -1024.0,
                    patient_id=f"SYNTH-CT-{i:04d}",
                    uid_seed=f"{seed}",
                )
        if layout == "ctrg-chest":
            _write_ctrg(tmp, cases, split)
        elif layout == "m3d":
            from .vqa import write_m3d

            write_m3d(tmp, cases, split, seed)
        else:
            _write_ct_rate(tmp, cases, split, seed)
        (tmp / "synth.json").write_text(
            json.dumps(
                {
                    "kind": "chest-ct",
                    "layout": layout,
                    "n": n,
                    "seed": seed,
                    "shape": list(shape),
                    "wording": wording,
                    "prevalence": dict(prevalence or {}),
                },
                indent=1,
            )
        )
    return out


def _write_truth(root: pathlib.Path, name: str, case: Case, split: int, layout: str) -> None:
    gt = root / "ground_truth"
    gt.mkdir(exist_ok=True)
    (gt / f"{name}.json").write_text(
        json.dumps(
            {
                "id": name,
                "split_index": split,
                "codes": case.codes.tolist(),
                "labels": case.labels.tolist(),
                "label_names": list(CONDITIONS),
                "findings": case.findings,
                "report": case.report,
                "spacing": list(case.spacing),
                "mask_values": {c: i + 1 for i, c in enumerate(CONDITIONS)},
            },
            indent=1,
        )
    )
    write_nifti(gt / f"{name}_mask.nii.gz", case.mask, case.affine)


def _write_ctrg(root: pathlib.Path, cases: list[Case], split: list[int]) -> None:
    vol = root / "CTRG-Chest-548K_volume"
    vol.mkdir()
    ann: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    names = ("train", "val", "test")
    for c, s in zip(cases, split):
        write_nifti(vol / f"{c.id}.nii.gz", c.hu, c.affine)
        ann[names[s]].append({"id": c.id, "finding": c.report})
    (root / "annotation.json").write_text(json.dumps(ann, indent=1))
    _, header = real_label_table()
    write_csv(
        root / "CTRG_finding_labels.csv",
        ["id", *header],
        [[c.id, *c.codes.tolist()] for c in cases],
    )


#: CT-RATE's 18 abnormality columns <- the CheXbert labels planted (unlisted columns are never
#: planted and are 0).
CT_RATE_COLUMNS = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)
CT_RATE_MAP: dict[str, tuple[str, ...]] = {
    "Medical material": ("support devices",),
    "Cardiomegaly": ("cardiomegaly",),
    "Lymphadenopathy": ("enlarged cardiomediastinum",),
    "Atelectasis": ("atelectasis",),
    "Lung nodule": ("lung lesion",),
    "Lung opacity": ("lung opacity", "consolidation", "pneumonia", "edema"),
    "Pleural effusion": ("pleural effusion",),
    "Consolidation": ("consolidation", "pneumonia"),
    "Interlobular septal thickening": ("edema",),
}


def ct_rate_labels(labels: np.ndarray) -> np.ndarray:
    """The 18 CT-RATE columns (0/1) of 14 CheXbert labels ``[..., 14]`` -> ``[..., 18]``."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape[:-1] + (len(CT_RATE_COLUMNS),), dtype=np.int64)
    for j, col in enumerate(CT_RATE_COLUMNS):
        for name in CT_RATE_MAP.get(col, ()):
            out[..., j] |= labels[..., R.IDX[name]]
    return out


def _write_ct_rate(root: pathlib.Path, cases: list[Case], split: list[int], seed: int) -> None:
    rows: dict[str, dict[str, list[list[Any]]]] = {
        s: {"rep": [], "lab": [], "meta": []} for s in ("train", "valid")
    }
    counters = {"train": 0, "valid": 0}
    for c, s in zip(cases, split):
        sp = "train" if s == 0 else "valid"
        counters[sp] += 1
        pid = f"{sp}_{counters[sp]}"
        name = f"{pid}_a_1.nii.gz"
        raw = (c.hu.astype(np.int32) + 1024).astype(np.int16)
        write_nifti(root / "dataset" / sp / pid / f"{pid}_a" / name, raw, c.affine)
        gt_file = root / "ground_truth" / f"{c.id}.json"
        gt = json.loads(gt_file.read_text())
        gt["volume_name"] = name
        gt_file.write_text(json.dumps(gt, indent=1))
        found = [f for f in c.findings]
        rows[sp]["rep"].append(
            [name, "Not given.", "Non-contrast chest CT.", c.report, R.ct_rate_impression(found)]
        )
        rows[sp]["lab"].append([name, *ct_rate_labels(c.labels).tolist()])
        sx, sy, sz = c.spacing
        nx, ny, nz = c.hu.shape
        ipp = [
            float(-c.affine[0, 3]),
            float(-c.affine[1, 3]),
            float(c.affine[2, 3] + (nz - 1) * sz),
        ]
        rows[sp]["meta"].append(
            [
                name,
                "SYNTH",
                "CHEST",
                "voxlm-synth",
                "M" if c.id % 2 else "F",
                f"{50 + c.id % 30:03d}Y",
                "HFS",
                str(ipp),
                "[1, 0, 0, 0, 1, 0]",
                ny,
                nx,
                nz,
                f"[{sx}, {sy}]",
                sz,
                -1024,
                1,
                "HU",
            ]
        )
    for sp, csv_sp in (("train", "train"), ("valid", "validation")):
        write_csv(
            root / "radiology_text_reports" / f"{csv_sp}_reports.csv",
            [
                "VolumeName",
                "ClinicalInformation_EN",
                "Technique_EN",
                "Findings_EN",
                "Impressions_EN",
            ],
            rows[sp]["rep"],
        )
        write_csv(
            root / "multi_abnormality_labels" / f"{sp}_predicted_labels.csv",
            ["VolumeName", *CT_RATE_COLUMNS],
            rows[sp]["lab"],
        )
        write_csv(
            root / "metadata" / f"{csv_sp}_metadata.csv",
            [
                "VolumeName",
                "Manufacturer",
                "SeriesDescription",
                "ManufacturerModelName",
                "PatientSex",
                "PatientAge",
                "PatientPosition",
                "ImagePositionPatient",
                "ImageOrientationPatient",
                "Rows",
                "Columns",
                "NumberofSlices",
                "XYSpacing",
                "ZSpacing",
                "RescaleIntercept",
                "RescaleSlope",
                "RescaleType",
            ],
            rows[sp]["meta"],
        )


def read_truth(root: PathLike, case_id: str | int) -> dict[str, Any]:
    """The ground-truth record ``ground_truth/<id>.json`` of a generated dataset."""
    return json.loads((pathlib.Path(root) / "ground_truth" / f"{case_id}.json").read_text())

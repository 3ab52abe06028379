"""Synthetic prostate MRI (T2W, ADC, high-b DWI) with one lesion scored by PI-RADS-style rules.

Anatomy on a ``[D, H, W]`` grid (ITK/LPS, SimpleITK array order): pelvic fat and muscle,
the prostate (an ellipsoid) with a posterior peripheral zone (PZ, bright on T2W, ADC ~1600
x10^-6 mm^2/s) around a central transition zone (TZ, intermediate T2W, ADC ~1200), the rectum
behind it (dark wall, air), the bladder above (bright T2W, very high ADC). ADC and DWI are
written at half the in-plane resolution of T2W over the same field of view, as in PI-CAI.

Every case has one index lesion with features sampled for a target score, and its score is then
computed from the features by :func:`pirads_score` (the rules are the ground truth):

Peripheral zone (DWI/ADC decide; the "dominant sequence"):

====== =====================================================================================
1      normal on ADC and DWI: ADC darkening < 10 %, DWI brightening < 10 %
2      linear / wedge-shaped mild ADC hypointensity (10-25 %), DWI brightening < 25 %
3      focal, mild/moderate: ADC darkening 25-45 % or DWI brightening 25-60 %, not both marked
4      focal, marked: ADC darkening >= 45 % and DWI brightening >= 60 %, size < 15 mm
5      as 4, size >= 15 mm or extraprostatic extension
====== =====================================================================================

Transition zone (T2W decides; DWI can upgrade 2 -> 3):

====== =====================================================================================
1      round, completely encapsulated nodule (``t2_shape="encapsulated"``)
2      mostly encapsulated / homogeneous circumscribed nodule (``"circumscribed"``);
       3 if DWI brightening >= 60 % and ADC darkening >= 45 % (the v2.1 upgrade)
3      heterogeneous with obscured margins (``"heterogeneous"``)
4      lenticular or non-circumscribed, homogeneous, moderately hypointense, < 15 mm
       (``"lenticular"``)
5      as 4, >= 15 mm or extraprostatic extension / invasive behaviour
====== =====================================================================================

Clinical significance (ISUP grade group) is drawn given the score (PI-RADS 1-2: csPCa in 5 %,
3: 20 %, 4: 55 %, 5: 85 %); csPCa lesions (ISUP >= 2) are delineated in the PI-CAI masks.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..exceptions import ConfigError
from .chest_ct import _smooth_noise, _splits
from .writers import (
    PathLike,
    atomic_dir,
    check_size,
    lps_to_ras_affine,
    write_csv,
    write_dicom_series,
    write_mha,
    write_nifti,
)

#: voxlm's wording of the public PI-RADS v2.1 assessment criteria (guideline text for PICG).
GUIDELINE_T2W = (
    "Prostate lesions are scored 1 to 5 for the likelihood of clinically significant cancer. "
    "In the transition "
    "zone, T2-weighted imaging is the dominant sequence.\n"
    "1: normal appearing transition zone or a round, completely encapsulated nodule.\n"
    "2: a mostly encapsulated nodule, or a homogeneous circumscribed nodule without "
    "encapsulation, or a "
    "homogeneous mildly hypointense area between nodules.\n"
    "3: heterogeneous signal intensity with obscured margins.\n"
    "4: lenticular or non-circumscribed, homogeneous, moderately hypointense, less than 1.5 cm "
    "in greatest "
    "dimension.\n"
    "5: same as 4 but 1.5 cm or more in greatest dimension, or definite extraprostatic "
    "extension or invasive "
    "behavior."
)
GUIDELINE_DWI_ADC = (
    "Prostate lesions are scored 1 to 5 for the likelihood of clinically significant cancer. "
    "In the peripheral "
    "zone, diffusion-weighted imaging and the ADC map are the dominant sequences. "
    "The lesion signal is compared "
    "with normal tissue of the same zone: dark on the ADC map and bright on high b-value "
    "images is abnormal.\n"
    "1: no abnormality on ADC and high b-value images.\n"
    "2: linear or wedge-shaped hypointensity on ADC and/or linear or wedge-shaped "
    "hyperintensity on high b-value "
    "images.\n"
    "3: focal, mild or moderate hypointensity on ADC and/or mild or moderate hyperintensity "
    "on high b-value "
    "images.\n"
    "4: focal, markedly hypointense on ADC and markedly hyperintense on high b-value images, "
    "less than 1.5 cm in "
    "greatest dimension.\n"
    "5: same as 4 but 1.5 cm or more in greatest dimension, or definite extraprostatic "
    "extension or invasive "
    "behavior."
)
SCORE_WORDS = {1: "very low", 2: "low", 3: "intermediate", 4: "high", 5: "very high"}


def pirads_score(
    zone: str, size_mm: float, adc_drop: float, dwi_gain: float, t2_shape: str, epe: bool = False
) -> int:
    """The score of a lesion by the rules in the module docstring.

    Args:
        zone: ``"pz"`` or ``"tz"``.
        size_mm: greatest dimension.
        adc_drop: relative ADC darkening vs the zone's normal tissue (0 = iso, 0.5 = half).
        dwi_gain: relative high-b brightening vs normal tissue (0 = iso, 1 = twice).
        t2_shape: ``"encapsulated" | "circumscribed" | "heterogeneous" | "lenticular" | "wedge" |
            "none"``.
        epe: extraprostatic extension.
    """
    marked = adc_drop >= 0.45 and dwi_gain >= 0.6
    if zone == "pz":
        if marked:
            return 5 if (size_mm >= 15 or epe) else 4
        if adc_drop >= 0.25 or dwi_gain >= 0.25:
            return 3
        if adc_drop >= 0.10 or t2_shape == "wedge":
            return 2
        return 1
    if zone == "tz":
        if t2_shape == "lenticular":
            return 5 if (size_mm >= 15 or epe) else 4
        if t2_shape == "heterogeneous":
            return 3
        if t2_shape == "circumscribed":
            return 3 if marked else 2
        return 1
    raise ConfigError(f"pirads_score zone: expected 'pz' or 'tz', got {zone!r}")


def _features_for(rng: np.random.Generator, score: int) -> dict[str, Any]:
    """Lesion features whose rule score is ``score``."""
    zone = "pz" if rng.random() < 0.7 else "tz"
    epe = False
    if zone == "pz":
        if score == 1:
            f = dict(
                adc_drop=rng.uniform(0.0, 0.08),
                dwi_gain=rng.uniform(0.0, 0.08),
                t2_shape="none",
                size_mm=rng.uniform(5, 12),
            )
        elif score == 2:
            f = dict(
                adc_drop=rng.uniform(0.12, 0.22),
                dwi_gain=rng.uniform(0.0, 0.2),
                t2_shape="wedge",
                size_mm=rng.uniform(6, 14),
            )
        elif score == 3:
            f = dict(
                adc_drop=rng.uniform(0.27, 0.42),
                dwi_gain=rng.uniform(0.3, 0.55),
                t2_shape="heterogeneous",
                size_mm=rng.uniform(6, 16),
            )
        elif score == 4:
            f = dict(
                adc_drop=rng.uniform(0.5, 0.65),
                dwi_gain=rng.uniform(0.7, 1.2),
                t2_shape="lenticular",
                size_mm=rng.uniform(7, 13.5),
            )
        else:
            epe = bool(rng.random() < 0.3)
            f = dict(
                adc_drop=rng.uniform(0.5, 0.7),
                dwi_gain=rng.uniform(0.8, 1.5),
                t2_shape="lenticular",
                size_mm=rng.uniform(10, 14) if epe else rng.uniform(16, 24),
            )
    else:
        shape = {
            1: "encapsulated",
            2: "circumscribed",
            3: "heterogeneous",
            4: "lenticular",
            5: "lenticular",
        }[score]
        marked = score >= 4 or (score == 3 and rng.random() < 0.5)
        f = dict(
            adc_drop=rng.uniform(0.5, 0.65) if marked else rng.uniform(0.05, 0.35),
            dwi_gain=rng.uniform(0.7, 1.1) if marked else rng.uniform(0.0, 0.4),
            t2_shape=shape,
            size_mm=rng.uniform(16, 24) if score == 5 else rng.uniform(7, 13.5),
        )
        if score == 2:  # keep below the DWI upgrade
            f["dwi_gain"] = min(f["dwi_gain"], 0.5)
    out = {k: float(v) if not isinstance(v, str) else v for k, v in f.items()}
    out.update(zone=zone, epe=epe)
    return out


def generate_case(
    case_id: int,
    score: int,
    seed: int = 0,
    shape: tuple[int, int, int] = (20, 96, 96),
    spacing_xyz: tuple[float, float, float] = (1.25, 1.25, 3.0),
) -> dict[str, Any]:
    """One case: ``{"t2w", "adc", "dwi"}`` float32 ``[D, H, W]`` (ADC/DWI at half in-plane
    resolution), ``"mask"`` uint8 lesion mask on the T2W grid, and the lesion record."""
    rng = np.random.default_rng([int(seed), int(case_id), 29])
    d, h, w = shape
    sx, sy, sz = spacing_xyz
    zz = (np.arange(d) - (d - 1) / 2)[:, None, None] * sz
    yy = (np.arange(h) - (h - 1) / 2)[None, :, None] * sy  # LPS: +y posterior
    xx = (np.arange(w) - (w - 1) / 2)[None, None, :] * sx

    def ell(c: Sequence[float], r: Sequence[float]) -> np.ndarray:
        return ((xx - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((zz - c[2]) / r[2]) ** 2 < 1

    full = (d, h, w)
    t2 = np.full(full, 0.0, np.float32)
    adc = np.full(full, 0.0, np.float32)
    dwi = np.full(full, 0.0, np.float32)
    body = np.broadcast_to((xx / 58) ** 2 + (yy / 50) ** 2 < 1, full)
    t2[body], adc[body], dwi[body] = 380, 900, 40  # fat
    muscle = ell((0, 5, 0), (46, 38, 200)) & ~ell((0, 5, 0), (36, 30, 200))
    t2[muscle], adc[muscle], dwi[muscle] = 120, 1400, 35
    pr = (rng.uniform(19, 25), rng.uniform(15, 19), rng.uniform(15, 20))
    pc = (rng.uniform(-2, 2), rng.uniform(-3, 1), rng.uniform(-3, 3))
    prostate = ell(pc, pr)
    tz = ell((pc[0], pc[1] - 4, pc[2]), (pr[0] * 0.6, pr[1] * 0.55, pr[2] * 0.8))
    pz = prostate & ~tz & (yy > pc[1] - 3)  # peripheral zone: the posterior / lateral rim
    stroma = prostate & ~tz & ~pz  # anterior fibromuscular stroma
    tex = _smooth_noise(rng, full, cell=3)
    t2[pz], adc[pz], dwi[pz] = 300 + 25 * tex[pz], 1600 + 80 * tex[pz], 60 + 6 * tex[pz]
    t2[tz], adc[tz], dwi[tz] = 190 + 40 * tex[tz], 1200 + 100 * tex[tz], 65 + 8 * tex[tz]
    t2[stroma], adc[stroma], dwi[stroma] = 100, 1100, 45
    rectum_c = (pc[0], pc[1] + pr[1] + 9, pc[2])
    rwall = ell(rectum_c, (14, 9, 60))
    t2[rwall], adc[rwall], dwi[rwall] = 90, 1300, 45
    (
        t2[ell(rectum_c, (8, 4, 60))],
        adc[ell(rectum_c, (8, 4, 60))],
        dwi[ell(rectum_c, (8, 4, 60))],
    ) = 20, 0, 5
    bladder = ell((pc[0], pc[1] - 6, pc[2] + pr[2] + 14), (30, 22, 14)) & ~prostate
    t2[bladder], adc[bladder], dwi[bladder] = 600, 2800, 20

    feat = _features_for(rng, score)
    zone_mask = pz if feat["zone"] == "pz" else tz
    idx = np.argwhere(zone_mask & ell(pc, (pr[0] * 0.85, pr[1] * 0.85, pr[2] * 0.7)))
    if not len(idx):
        idx = np.argwhere(zone_mask)
    kz, ky, kx = idx[rng.integers(len(idx))]
    c = (float(xx[0, 0, kx]), float(yy[0, ky, 0]), float(zz[kz, 0, 0]))
    a = feat["size_mm"] / 2
    if feat["t2_shape"] == "wedge":
        r = (a, a * 0.35, a * 0.8)
    elif feat["t2_shape"] == "lenticular":
        r = (a, a * 0.55, a * 0.8)
    else:
        r = (a, a * 0.8, a * 0.8)
    lesion = ell(c, r)
    if not feat["epe"]:
        lesion &= prostate
    normal_adc = 1600.0 if feat["zone"] == "pz" else 1200.0
    normal_dwi = 60.0 if feat["zone"] == "pz" else 65.0
    adc[lesion] = normal_adc * (1 - feat["adc_drop"])
    dwi[lesion] = normal_dwi * (1 + feat["dwi_gain"])
    t2_val = {
        "none": None,
        "wedge": 230.0,
        "encapsulated": 210.0,
        "circumscribed": 170.0,
        "heterogeneous": 150.0,
        "lenticular": 110.0,
    }[feat["t2_shape"]]
    if t2_val is not None:
        t2[lesion] = t2_val + (35 * tex[lesion] if feat["t2_shape"] == "heterogeneous" else 0)
        if feat["t2_shape"] == "encapsulated":
            cap = ell(c, [x * 1.25 for x in r]) & ~lesion & prostate
            t2[cap] = 70
    got = pirads_score(
        feat["zone"],
        feat["size_mm"],
        feat["adc_drop"],
        feat["dwi_gain"],
        feat["t2_shape"],
        feat["epe"],
    )
    assert got == score, (feat, got, score)
    t2 = t2 + rng.normal(0, 8, full).astype(np.float32)
    adc = adc + rng.normal(0, 40, full).astype(np.float32)
    dwi = dwi + rng.normal(0, 3, full).astype(np.float32)

    # ADC / DWI at half the in-plane resolution (2x2 block means)
    def half(x: np.ndarray) -> np.ndarray:
        return x[:, : h // 2 * 2, : w // 2 * 2].reshape(d, h // 2, 2, w // 2, 2).mean((2, 4))

    p_cs = {1: 0.05, 2: 0.05, 3: 0.2, 4: 0.55, 5: 0.85}[score]
    isup = (
        int(rng.choice([2, 3, 4, 5], p=[0.5, 0.25, 0.15, 0.1]))
        if rng.random() < p_cs
        else int(rng.choice([0, 1]))
    )
    lesion_rec = {
        "pirads": score,
        "isup": isup,
        "cspca": isup >= 2,
        **feat,
        "point_voxel_xyz": [int(kx), int(ky), int(kz)],
        "point_mm_lps": list(c),
        "radii_mm": list(r),
        "voxels": int(lesion.sum()),
    }
    return {
        "t2w": np.clip(t2, 0, None),
        "adc": np.clip(half(adc), 0, None),
        "dwi": np.clip(half(dwi), 0, None),
        "mask": lesion.astype(np.uint8),
        "prostate": prostate.astype(np.uint8),
        "lesion": lesion_rec,
        "spacing_xyz": spacing_xyz,
        "shape": shape,
    }


SCORE_P = (0.15, 0.2, 0.25, 0.25, 0.15)


def prostate_mri(
    out: PathLike,
    n: int,
    seed: int = 0,
    layout: str = "picai",
    shape: tuple[int, int, int] = (20, 96, 96),
    score_p: Sequence[float] = SCORE_P,
    dicom_every: int = 0,
) -> pathlib.Path:
    """Write ``n`` synthetic prostate MRI studies under ``out`` and return it.

    Layouts:
        ``"picai"``: ``<pid>/<pid>_<sid>_{t2w,adc,hbv}.mha`` (zlib-compressed MetaImage, ITK
        geometry; ADC/HBV at half in-plane resolution), ``clinical_information/marksheet.csv``
        (patient_id, study_id, mri_date, patient_age, psa, psad, prostate_volume, histopath_type,
        lesion_PIRADS, lesion_GS, lesion_ISUP, case_ISUP, case_csPCa, center) and
        ``csPCa_lesion_delineations/human_expert/resampled/<pid>_<sid>.nii.gz`` (on the T2W grid,
        value = ISUP of csPCa lesions, 0 elsewhere).
        ``"prostate-biopsy"`` (PICG's derived crops): ``<case>/<case>_{T2W,ADC,DWI}_Target1.nii.gz``
        (a lesion-centred crop, doubled bounding box, all three on one grid), split files
        ``{train,val,test}.txt`` with lines ``<case>-Target1 <PI-RADS>`` (70/10/20 %).

    Both hold ``ground_truth/<id>.json`` (the lesion: score, ISUP, zone, features, point) and
    ``guidelines.json`` (the T2W and DWI/ADC criteria text). ``dicom_every=k`` writes every
    k-th case also as three MR DICOM series under ``dicom/<id>/{t2w,adc,dwi}/``.
    """
    if layout not in ("picai", "prostate-biopsy"):
        raise ConfigError(
            f"prostate_mri layout: expected 'picai' or 'prostate-biopsy', got {layout!r}"
        )
    n, shape = check_size("prostate_mri", n, shape, out, bytes_per_voxel=0.5, volumes=3)
    out = pathlib.Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"prostate_mri: {out} exists and is not empty")
    rng = np.random.default_rng([int(seed), 2])
    p = np.asarray(score_p, dtype=np.float64)
    scores = rng.choice([1, 2, 3, 4, 5], size=n, p=p / p.sum())
    split = _splits(rng, n, (0.7, 0.1, 0.2))
    with atomic_dir(out) as tmp:
        marks = []
        lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for i in range(n):
            c = generate_case(i, int(scores[i]), seed=seed, shape=shape)
            les = c["lesion"]
            sp = c["spacing_xyz"]
            d, h, w = c["shape"]
            origin = (-(w - 1) / 2 * sp[0], -(h - 1) / 2 * sp[1], -(d - 1) / 2 * sp[2])
            sp_half = (sp[0] * 2, sp[1] * 2, sp[2])
            origin_half = (origin[0] + sp[0] / 2, origin[1] + sp[1] / 2, origin[2])
            if layout == "picai":
                pid, sid = str(10000 + i), str(1000000 + i)
                cid = f"{pid}_{sid}"
                folder = tmp / pid
                write_mha(folder / f"{cid}_t2w.mha", np.rint(c["t2w"]).astype(np.int16), sp, origin)
                write_mha(
                    folder / f"{cid}_adc.mha",
                    np.rint(c["adc"]).astype(np.int16),
                    sp_half,
                    origin_half,
                )
                write_mha(
                    folder / f"{cid}_hbv.mha",
                    np.rint(c["dwi"]).astype(np.int16),
                    sp_half,
                    origin_half,
                )
                lab = c["mask"] * np.uint8(les["isup"] if les["cspca"] else 0)
                write_nifti(
                    tmp
                    / "csPCa_lesion_delineations"
                    / "human_expert"
                    / "resampled"
                    / f"{cid}.nii.gz",
                    np.ascontiguousarray(lab.transpose(2, 1, 0)),
                    lps_to_ras_affine(sp, origin),
                )
                vol = float(c["prostate"].sum() * sp[0] * sp[1] * sp[2] / 1000)
                psa = float(np.round(rng.uniform(2, 8) + 4 * (les["isup"] >= 2) * rng.random(), 1))
                gs = {0: "N/A", 1: "3+3", 2: "3+4", 3: "4+3", 4: "4+4", 5: "4+5"}[les["isup"]]
                marks.append(
                    [
                        pid,
                        sid,
                        "2020-01-01",
                        int(rng.integers(50, 80)),
                        psa,
                        round(psa / vol, 2),
                        round(vol, 1),
                        "MRBx" if les["pirads"] >= 3 else "SysBx",
                        str(les["pirads"]),
                        gs,
                        str(les["isup"]),
                        les["isup"],
                        "YES" if les["cspca"] else "NO",
                        "SYN",
                    ]
                )
            else:
                pid = cid = f"Prostate-MRI-US-Biopsy-{i + 1:04d}"
                _write_biopsy_crops(tmp / cid, cid, c, sp)
                lines[("train", "val", "test")[split[i]]].append(f"{cid}-Target1 {les['pirads']}")
            if dicom_every and i % dicom_every == 0:
                for name, arr, spc, org, desc in (
                    ("t2w", c["t2w"], sp, origin, "t2_tse_tra"),
                    ("adc", c["adc"], sp_half, origin_half, "ep2d_diff_ADC"),
                    ("dwi", c["dwi"], sp_half, origin_half, "ep2d_diff_b1400"),
                ):
                    write_dicom_series(
                        tmp / "dicom" / cid / name,
                        arr,
                        spc,
                        org,
                        "MR",
                        patient_id=pid,
                        series_description=desc,
                        series_number=("t2w", "adc", "dwi").index(name) + 1,
                        uid_seed=f"{seed}",
                    )
            gt = tmp / "ground_truth"
            gt.mkdir(exist_ok=True)
            (gt / f"{cid}.json").write_text(
                json.dumps(
                    {
                        "id": cid,
                        "split_index": split[i],
                        **les,
                        "t2w_shape_zyx": list(c["shape"]),
                        "t2w_spacing_xyz": list(sp),
                    },
                    indent=1,
                )
            )
        if layout == "picai":
            write_csv(
                tmp / "clinical_information" / "marksheet.csv",
                [
                    "patient_id",
                    "study_id",
                    "mri_date",
                    "patient_age",
                    "psa",
                    "psad",
                    "prostate_volume",
                    "histopath_type",
                    "lesion_PIRADS",
                    "lesion_GS",
                    "lesion_ISUP",
                    "case_ISUP",
                    "case_csPCa",
                    "center",
                ],
                marks,
            )
        else:
            for s, ls in lines.items():
                (tmp / f"{s}.txt").write_text("".join(x + "\n" for x in ls))
        (tmp / "guidelines.json").write_text(
            json.dumps(
                {"T2W": GUIDELINE_T2W, "DWI/ADC": GUIDELINE_DWI_ADC, "scores": SCORE_WORDS},
                indent=1,
            )
        )
        (tmp / "synth.json").write_text(
            json.dumps(
                {
                    "kind": "prostate-mri",
                    "layout": layout,
                    "n": n,
                    "seed": seed,
                    "shape": list(shape),
                },
                indent=1,
            )
        )
    return out


def _write_biopsy_crops(
    folder: pathlib.Path, case: str, c: dict[str, Any], sp: Sequence[float]
) -> None:
    """PICG-style crops around the lesion: the doubled bounding box of the lesion (at least
    16 mm), T2W / ADC (upsampled to the T2W grid, nearest) / DWI, as NIfTI (RAS)."""
    les = c["lesion"]
    d, h, w = c["shape"]
    kx, ky, kz = les["point_voxel_xyz"]
    half_mm = [max(2 * r, 16.0) for r in les["radii_mm"]]
    hx, hy, hz = (max(int(np.ceil(half_mm[i] / sp[i])), 2) for i in range(3))
    sl = (
        slice(max(kz - hz, 0), min(kz + hz + 1, d)),
        slice(max(ky - hy, 0), min(ky + hy + 1, h)),
        slice(max(kx - hx, 0), min(kx + hx + 1, w)),
    )

    def up(x: np.ndarray) -> np.ndarray:
        u = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
        return np.pad(u, ((0, 0), (0, h - u.shape[1]), (0, w - u.shape[2])), mode="edge")

    origin = (
        -(w - 1) / 2 * sp[0] + sl[2].start * sp[0],
        -(h - 1) / 2 * sp[1] + sl[1].start * sp[1],
        -(d - 1) / 2 * sp[2] + sl[0].start * sp[2],
    )
    aff = lps_to_ras_affine(sp, origin)
    for name, arr in (("T2W", c["t2w"]), ("ADC", up(c["adc"])), ("DWI", up(c["dwi"]))):
        crop = arr[sl].astype(np.float32)
        write_nifti(
            folder / f"{case}_{name}_Target1.nii.gz",
            np.ascontiguousarray(crop.transpose(2, 1, 0)),
            aff,
        )

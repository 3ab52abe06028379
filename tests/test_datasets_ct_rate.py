"""CT-RATE reader (layout of the CT-RATE dataset card / CT-CLIP README and TorchIO's
datasets/ct_rate.py) on a miniature copy with the real column names."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

import voxlm.datasets as D
from voxlm.datasets import open_dataset, read_records
from voxlm.datasets.ct_rate import ABNORMALITIES
from voxlm.exceptions import ConfigError, DataError

META_COLUMNS = [
    "VolumeName",
    "Manufacturer",
    "SeriesDescription",
    "ManufacturerModelName",
    "PatientSex",
    "PatientAge",
    "ReconstructionDiameter",
    "DistanceSourceToDetector",
    "DistanceSourceToPatient",
    "GantryDetectorTilt",
    "TableHeight",
    "RotationDirection",
    "XRayTubeCurrent",
    "Exposure",
    "FilterType",
    "ConvolutionKernel",
    "SliceThickness",
    "Rows",
    "Columns",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "XYSpacing",
    "ZSpacing",
    "NumberofSlices",
]


def _write(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def make_ct_rate(root, fixed=False, tables="dataset"):
    """Two patients per split, one with two reconstructions; real report text as Findings_EN. The
    tables go under dataset/ (the Hugging Face repository, as TorchIO reads it) or the root."""
    troot = root / "dataset" if tables == "dataset" else root
    res = D.dia_llama_results()
    rng = np.random.default_rng(1)
    names = {
        "train": ["train_1_a_1", "train_1_a_2", "train_2_a_1"],
        "valid": ["valid_1_a_1", "valid_3_b_2"],
    }
    truth = {}
    k = 0
    for folder, rname in (("train", "train"), ("valid", "validation")):
        reps, labs, metas = [], [], []
        for n in names[folder]:
            pid, scan = "_".join(n.split("_")[:2]), "_".join(n.split("_")[:3])
            d = root / "dataset" / (folder + ("_fixed" if fixed else "")) / pid / scan
            d.mkdir(parents=True, exist_ok=True)
            nib.save(
                nib.Nifti1Image(rng.integers(0, 2000, size=(5, 5, 3)).astype(np.int16), np.eye(4)),
                d / f"{n}.nii.gz",
            )
            lab = rng.integers(0, 2, size=18)
            slope, inter, xy, z = 1.0, -1024.0 - k, (0.7 + 0.01 * k, 0.7 + 0.01 * k), 1.5 + k
            truth[n] = (res.references[k], res.predictions[k], lab, (slope, inter, xy, z))
            reps.append(
                [
                    f"{n}.nii.gz",
                    "Not given.",
                    "Non-contrast chest CT.",
                    res.references[k],
                    res.predictions[k],
                ]
            )
            labs.append([f"{n}.nii.gz", *lab.tolist()])
            row = {c: "" for c in META_COLUMNS}
            row.update(
                VolumeName=f"{n}.nii.gz",
                RescaleIntercept=str(inter),
                RescaleSlope=str(slope),
                XYSpacing=f"[{xy[0]}, {xy[1]}]",
                ZSpacing=str(z),
                ImagePositionPatient="[-200, -180, -300]",
                ImageOrientationPatient="[1, 0, 0, 0, 1, 0]",
                Rows="512",
                Columns="512",
            )
            metas.append([row[c] for c in META_COLUMNS])
            k += 1
        _write(
            troot / "radiology_text_reports" / f"{rname}_reports.csv",
            [
                "VolumeName",
                "ClinicalInformation_EN",
                "Technique_EN",
                "Findings_EN",
                "Impressions_EN",
            ],
            reps,
        )
        _write(
            troot / "multi_abnormality_labels" / f"{folder}_predicted_labels.csv",
            ["VolumeName", *ABNORMALITIES],
            labs,
        )
        _write(troot / "metadata" / f"{rname}_metadata.csv", META_COLUMNS, metas)
    return names, truth


@pytest.mark.parametrize("fixed,tables", [(False, "dataset"), (True, "root")])
def test_ct_rate_records(tmp_path, fixed, tables):
    names, truth = make_ct_rate(tmp_path, fixed=fixed, tables=tables)
    for split, folder in (("train", "train"), ("validation", "valid"), ("valid", "valid")):
        recs = read_records("ct-rate", tmp_path, split=split)
        assert [r["id"] for r in recs] == names[folder]
        for r in recs:
            find, imp, lab, (slope, inter, xy, z) = truth[r["id"]]
            pid, scan = "_".join(r["id"].split("_")[:2]), "_".join(r["id"].split("_")[:3])
            sub = folder + ("_fixed" if fixed else "")
            assert r["image"] == str(tmp_path / "dataset" / sub / pid / scan / f"{r['id']}.nii.gz")
            assert r["split"] == ("train" if folder == "train" else "validation")
            assert r["report"] == find and r["sections"]["findings"] == find
            assert (
                r["sections"]["impression"] == imp
                and r["sections"]["clinical_information"] == "Not given."
            )
            np.testing.assert_array_equal(r["labels"], lab, strict=True)
            assert r["label_names"] == ABNORMALITIES and len(ABNORMALITIES) == 18
            m = r["meta"]
            assert m["rescale_slope"] == slope and m["rescale_intercept"] == inter
            assert m["spacing"] == pytest.approx((xy[0], xy[1], z))
            assert m["origin"] == [-200.0, -180.0, -300.0] and m["orientation"] == [
                1,
                0,
                0,
                0,
                1,
                0,
            ]
            assert m["row"]["Rows"] == "512"


def test_ct_rate_loading_vs_nibabel(tmp_path):
    make_ct_rate(tmp_path)
    ds = open_dataset("ct-rate", tmp_path, split="validation")
    it = ds[1]
    ref = np.asarray(nib.load(it["path"]).dataobj).astype(np.float32)[None]
    np.testing.assert_array_equal(it["image"].numpy(), ref, strict=True)
    # HU as CT-CLIP computes it, from the record's meta
    hu = it["meta"]["rescale_slope"] * it["image"] + it["meta"]["rescale_intercept"]
    np.testing.assert_allclose(hu.numpy(), ref * 1.0 - 1028.0)


def test_ct_rate_bad_input(tmp_path):
    make_ct_rate(tmp_path)
    with pytest.raises(ConfigError, match="train, validation"):
        read_records("ct-rate", tmp_path, split="test")
    (tmp_path / "dataset/train/train_2/train_2_a/train_2_a_1.nii.gz").unlink()
    with pytest.raises(DataError, match="row 2 .*train_2_a_1.nii.gz"):
        read_records("ct-rate", tmp_path)
    (tmp_path / "dataset/metadata/validation_metadata.csv").unlink()
    # asked for (metadata=True): the table must exist; by default a copy without it reads
    with pytest.raises(DataError, match="validation_metadata.csv"):
        read_records("ct-rate", tmp_path, split="validation", metadata=True)
    recs = read_records("ct-rate", tmp_path, split="validation")
    assert len(recs) == 2 and "meta" not in recs[0] and "labels" in recs[0]
    (tmp_path / "dataset/multi_abnormality_labels/valid_predicted_labels.csv").unlink()
    with pytest.raises(DataError, match="valid_predicted_labels.csv"):
        read_records("ct-rate", tmp_path, split="validation", labels=True)
    assert "labels" not in read_records("ct-rate", tmp_path, split="validation")[0]


def test_ct_rate_bad_metadata_value(tmp_path):
    make_ct_rate(tmp_path)
    p = tmp_path / "dataset/metadata/train_metadata.csv"
    p.write_text(p.read_text().replace('"[0.7, 0.7]"', '"0.7 x 0.7"'))
    with pytest.raises(
        DataError, match=r"train_metadata\.csv row 2: XYSpacing '0\.7 x 0\.7' is not '\[x, y\]'"
    ):
        read_records("ct-rate", tmp_path)
    p.write_text(p.read_text().replace("RescaleSlope", "Slope"))
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['RescaleSlope'\]"):
        read_records("ct-rate", tmp_path)

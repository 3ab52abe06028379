"""voxlm.synth.chest_xray: PA + lateral PNGs read by Pillow, the MIMIC-CXR-JPG tables (gzipped
CSVs), reports with FINDINGS: / IMPRESSION: sections whose findings the labeler recovers, and
voxlm's mimic-cxr reader."""

import csv
import gzip
import importlib
import io
import json

import numpy as np
import pytest

from voxlm import synth
from voxlm.synth import reports as R

X = importlib.import_module("voxlm.synth.chest_xray")
C = importlib.import_module("voxlm.synth.chest_ct")
Image = pytest.importorskip("PIL.Image")
SHAPE = (48, 40, 40)


@pytest.fixture(scope="module")
def mimic(tmp_path_factory):
    return synth.chest_xray(
        tmp_path_factory.mktemp("cxr") / "m",
        8,
        seed=2,
        shape=SHAPE,
        prevalence={"cardiomegaly": 0.5, "pleural effusion": 0.5},
    )


def _csv_gz(path):
    return list(csv.DictReader(io.StringIO(gzip.decompress(path.read_bytes()).decode())))


def test_tables_images_and_reports(mimic):
    meta = _csv_gz(mimic / "mimic-cxr-2.0.0-metadata.csv.gz")
    split = _csv_gz(mimic / "mimic-cxr-2.0.0-split.csv.gz")
    chex = _csv_gz(mimic / "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert len(meta) == len(split) == 16 and len(chex) == 8
    assert list(chex[0]) == ["subject_id", "study_id", *X.CHEXPERT_COLUMNS]
    assert {r["ViewPosition"] for r in meta} == {"PA", "LATERAL"}
    assert {r["split"] for r in split} <= {"train", "validate", "test"}
    by_study = {r["study_id"]: r for r in chex}
    for m in meta:
        subj, study = m["subject_id"], m["study_id"]
        gt = json.loads((mimic / "ground_truth" / f"{study}.json").read_text())
        png = mimic / "files" / f"p{subj[:2]}" / f"p{subj}" / f"s{study}" / f"{m['dicom_id']}.png"
        im = np.asarray(Image.open(png))
        assert im.dtype == np.uint8 and im.shape == (int(m["Rows"]), int(m["Columns"]))
        case = C.generate_case(
            10_000 + int(subj) - 10_000_000, np.asarray(gt["codes"]), seed=2, shape=SHAPE
        )
        np.testing.assert_array_equal(im, X.project(case.hu, case.spacing, m["ViewPosition"]))
        txt = (mimic / "files" / f"p{subj[:2]}" / f"p{subj}" / f"s{study}.txt").read_text()
        assert "FINDINGS:" in txt and "IMPRESSION:" in txt
        findings = txt.split("FINDINGS:")[1].split("IMPRESSION:")[0].strip()
        assert findings == gt["findings_text"]
        np.testing.assert_array_equal(R.label_report(findings), gt["labels"])
        row = by_study[study]
        for col in X.CHEXPERT_COLUMNS:
            code = gt["codes"][R.IDX[col.lower()]]
            assert row[col] == {0: "", 1: "1.0", 2: "0.0", 3: "-1.0"}[code]


def test_pa_shows_the_heart_wider_with_cardiomegaly():
    big = np.full(14, 2)
    big[R.IDX["no finding"]] = 0
    big[R.IDX["cardiomegaly"]] = 1
    normal = np.array([2] * 13 + [1])
    widths = []
    for codes in (normal, big):
        case = C.generate_case(1, codes, seed=0, shape=(96, 80, 80))
        pa = X.project(case.hu, case.spacing, "PA").astype(float)
        row = pa[int(pa.shape[0] * 0.7)]  # a row through the heart
        widths.append(int((row > 0.75 * row.max()).sum()))
    assert widths[1] > widths[0]


def test_reader(mimic):
    from voxlm.datasets import read_records

    recs = [
        r
        for split in ("train", "validation", "test")
        for r in read_records("mimic-cxr", mimic, split=split)
    ]
    assert len(recs) == 8
    for r in recs:
        assert len(r["images"]) == 2 and r["images"][0].endswith(".png")
        assert r["report"].strip()

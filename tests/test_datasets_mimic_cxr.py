"""MIMIC-CXR-JPG reader (PhysioNet layout; sections by a transcription of MIT-LCP/mimic-cxr
txt/section_parser.py) and RRG24 records, on a miniature copy with Pillow JPEGs."""

from __future__ import annotations

import csv
import gzip
import io
import json

import numpy as np
import pytest
from PIL import Image

import voxlm.datasets as D
from voxlm.datasets import ReportDataset, read_records
from voxlm.datasets.mimic_cxr import CHEXPERT, report_sections, section_text
from voxlm.exceptions import ConfigError, DataError

META = [
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]


def mimic_report(findings, impression):
    return (
        "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n"
        " INDICATION:  ___F with new onset ascites  // eval for infection\n \n"
        " TECHNIQUE:  Chest PA and lateral\n \n COMPARISON:  None.\n \n"
        f" FINDINGS: \n \n {findings}\n \n IMPRESSION: \n \n {impression}\n"
    )


def _gz_csv(path, header, rows):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(gzip.compress(buf.getvalue().encode()))


# study -> (subject, split, [(dicom_id, view)])
STUDIES = {
    "50414267": ("10000032", "train", [("d4", "LATERAL"), ("d2", "AP"), ("d1", "PA")]),
    "53189527": ("10000032", "train", [("e1", "AP")]),
    "56699142": ("10000764", "validate", [("f1", "PA"), ("f2", "LL")]),
    "57375967": ("10000898", "test", [("g1", "PA")]),
}


def make_mimic(root):
    res = D.dia_llama_results()
    rng = np.random.default_rng(6)
    meta, split, chex, truth = [], [], [], {}
    for k, (study, (subj, sp, dicoms)) in enumerate(STUDIES.items()):
        d = root / "files" / f"p{subj[:2]}" / f"p{subj}" / f"s{study}"
        d.mkdir(parents=True)
        for dicom, view in dicoms:
            Image.fromarray(rng.integers(0, 255, size=(12, 10), dtype=np.uint8), mode="L").save(
                d / f"{dicom}.jpg"
            )
            meta.append(
                [
                    dicom,
                    subj,
                    study,
                    "CHEST (PA AND LAT)",
                    view,
                    "12",
                    "10",
                    "21800506",
                    "213014.531",
                    "CHEST (PA AND LAT)",
                    "postero-anterior",
                    "Erect",
                ]
            )
            split.append([dicom, study, subj, sp])
        findings, impression = res.references[k][:200], res.predictions[k][:80]
        if study == "53189527":  # no FINDINGS header: impression only
            text = " FINAL REPORT\n INDICATION:  Cough.\n \n IMPRESSION: \n \n " + impression + "\n"
            findings = ""
        else:
            text = mimic_report(findings, impression)
        (d.parent / f"s{study}.txt").write_text(text)
        codes = ["1.0", "", "0.0", "-1.0", "", "", "", "1.0", "", "", "", "", "", "1.0"]
        chex.append([subj, study, *codes])
        truth[study] = (findings, impression)
    _gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", META, meta)
    _gz_csv(
        root / "mimic-cxr-2.0.0-split.csv.gz",
        ["dicom_id", "study_id", "subject_id", "split"],
        split,
    )
    _gz_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *CHEXPERT], chex)
    return truth


def test_section_parser_transcription():
    text = mimic_report("Lungs are clear.\n There is no effusion.", "No acute process.")
    sections, names, idx = section_text(text)
    assert names == [
        "preamble",
        "examination",
        "indication",
        "technique",
        "comparison",
        "findings",
        "impression",
    ]
    assert sections[5].strip() == "Lungs are clear.\n There is no effusion."
    assert text[idx[6] :].strip() == "No acute process."
    # normalisation of header variants, e.g. "FINDINGS AND IMPRESSION" -> impression,
    # "PA AND LATERAL" -> findings
    _, names, _ = section_text(
        " FINAL REPORT\n PA AND LATERAL VIEWS OF THE CHEST:  x\n \n"
        " FINDINGS AND IMPRESSION:  Normal.\n"
    )
    assert names == ["preamble", "findings", "impression"]
    # no impression/findings header: the last paragraph becomes its own section
    sections, names, _ = section_text(" WET READ: ___ clear lungs\n \n No pneumonia.\n")
    assert names[-1] == "last_paragraph" and sections[-1].strip() == "No pneumonia."
    assert report_sections(text) == {
        "findings": "Lungs are clear.\n There is no effusion.",
        "impression": "No acute process.",
    }


def test_mimic_records(tmp_path):
    truth = make_mimic(tmp_path)
    tr = read_records(
        "mimic-cxr", tmp_path
    )  # findings target: the impression-only study is dropped
    assert [r["id"] for r in tr] == ["50414267"]
    r = tr[0]
    base = tmp_path / "files/p10/p10000032/s50414267"
    assert r["images"] == [
        str(base / "d1.jpg"),
        str(base / "d2.jpg"),
        str(base / "d4.jpg"),
    ]  # PA, AP, LATERAL
    assert r["meta"]["views"] == ["PA", "AP", "LATERAL"] and r["meta"]["subject_id"] == "10000032"
    assert (
        r["report"] == truth["50414267"][0] and r["sections"]["impression"] == truth["50414267"][1]
    )
    np.testing.assert_array_equal(
        r["labels"], [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1], strict=True
    )
    assert (
        r["label_codes"][3] == -1.0
        and np.isnan(r["label_codes"][1])
        and r["label_names"] == CHEXPERT
    )
    imp = read_records("mimic-cxr", tmp_path, section="impression")
    assert [r["id"] for r in imp] == ["50414267", "53189527"]
    assert imp[1]["report"] == truth["53189527"][1]
    both = read_records("mimic-cxr", tmp_path, section=None, split="validation")
    assert both[0]["report"] == "\n".join(truth["56699142"]) and both[0]["meta"]["views"] == [
        "PA",
        "LL",
    ]
    frontal = read_records("mimic-cxr", tmp_path, section="impression", views=["PA", "AP"])
    assert [len(r["images"]) for r in frontal] == [2, 1]
    assert read_records("mimic-cxr", tmp_path, split="test")[0]["split"] == "test"
    # converted copies: a PNG where no JPEG exists
    jpg = tmp_path / "files/p10/p10000898/s57375967/g1.jpg"
    Image.open(jpg).save(jpg.with_suffix(".png"))
    jpg.unlink()
    assert read_records("mimic-cxr", tmp_path, split="test")[0]["images"] == [
        str(jpg.with_suffix(".png"))
    ]
    with pytest.raises(DataError, match=r"g1\.jpg does not exist"):
        read_records("mimic-cxr", tmp_path, split="test", ext=".jpg")


def test_rrg24_records(tmp_path):
    make_mimic(tmp_path)
    recs = [
        {
            "images": [
                "files/p10/p10000032/s50414267/d1.jpg",
                "files/p10/p10000032/s50414267/d4.jpg",
            ],
            "findings": "Lungs are clear.",
            "impression": "No acute process.",
            "source": "MIMIC-CXR",
        },
        {
            "images": ["files/p10/p10000032/s53189527/e1.jpg"],
            "findings": "",
            "impression": "Cardiomegaly.",
            "source": "CheXpert",
        },
    ]
    (tmp_path / "rrg24_train.json").write_text(json.dumps(recs))
    out = read_records("mimic-cxr", tmp_path, rrg24=tmp_path / "rrg24_train.json")
    assert (
        len(out) == 1
        and out[0]["report"] == "Lungs are clear."
        and out[0]["meta"]["source"] == "MIMIC-CXR"
    )
    assert out[0]["images"] == [str(tmp_path / p) for p in recs[0]["images"]]
    imp = read_records(
        "mimic-cxr", tmp_path, rrg24=tmp_path / "rrg24_train.json", section="impression"
    )
    assert [r["report"] for r in imp] == ["No acute process.", "Cardiomegaly."]
    recs[1]["images"] = ["files/gone.jpg"]
    (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    with pytest.raises(DataError, match=r"bad\.jsonl record 1 .*files/gone\.jpg does not exist"):
        read_records("mimic-cxr", tmp_path, rrg24=tmp_path / "bad.jsonl", section="impression")


def test_mimic_bad_input(tmp_path):
    make_mimic(tmp_path)
    with pytest.raises(ConfigError, match="train, validation, test"):
        read_records("mimic-cxr", tmp_path, split="dev-2")
    with pytest.raises(ConfigError, match="section"):
        read_records("mimic-cxr", tmp_path, section="history")
    (tmp_path / "files/p10/p10000032/s50414267/d2.jpg").unlink()
    with pytest.raises(
        DataError, match=r"study 50414267 .*images\[1\] file .*s50414267/d2\.jpg does not exist"
    ):
        read_records("mimic-cxr", tmp_path)
    (tmp_path / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(DataError, match="mimic-cxr-2.0.0-split.csv.gz"):
        read_records("mimic-cxr", tmp_path)


def test_mimic_jpegs_equal_pillow(tmp_path):
    """Each view equals Pillow's decoding of the same file ([1, H, W] for a grey JPEG) to one grey
    level: voxlm's JPEG decoder (zune-jpeg) and Pillow's libjpeg-turbo round their IDCTs
    differently (tests/test_image2d_vs_pillow.py bounds it on larger images: mean < 0.5, max 8)."""
    make_mimic(tmp_path)
    it = ReportDataset(read_records("mimic-cxr", tmp_path))[0]
    for t, p in zip(it["images"], it["paths"]):
        ref = np.asarray(Image.open(p), dtype=np.float32)  # [H, W] = (12, 10)
        assert t.shape[0] == 1
        # row-major [H, W] or nibabel-style [x, y] = [W, H]: the 12x10 image tells them apart
        got = t[0].numpy() if tuple(t.shape[1:]) == ref.shape else t[0].numpy().T
        assert got.shape == ref.shape and got.dtype == ref.dtype
        assert np.abs(got - ref).max() <= 1.0

"""The readers on miniature copies that differ from the other tests' fixtures in ways the real
downloads do: a BOM, Windows line endings, padded header names, other column orders and extra
columns, gzip instead of plain CSV, empty (NaN) report cells, the PI-CAI release's
``picai_public_images_fold*`` folders, M3D-Cap's JSON beside its volumes, MIMIC-CXR studies of 1
and 4 images with upper-case extensions; and the bad ones (a short CSV row, a non-numeric CheXpert
code, a JSON item of the wrong kind) each a DataError naming the row and the file. Image files are
empty: the readers only check that they exist."""

from __future__ import annotations

import csv
import gzip
import io
import json

import numpy as np
import pytest

from voxlm.datasets import read_records
from voxlm.datasets.ct_rate import ABNORMALITIES, REPORT_COLUMNS
from voxlm.datasets.mimic_cxr import CHEXPERT
from voxlm.exceptions import DataError


def _csv(header, rows, *, bom=False, crlf=False, gz=False) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n" if crlf else "\n").writerows([header, *rows])
    raw = (("\ufeff" if bom else "") + buf.getvalue()).encode()
    return gzip.compress(raw) if gz else raw


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")


def make_ct_rate(root, n=3):
    names = [f"train_{p}_a_{r}.nii.gz" for p, r in [(1, 1), (1, 2), (12, 1)]][:n]
    for v in names:
        pid, scan = "_".join(v.split("_")[:2]), "_".join(v.split("_")[:3])
        _touch(root / "dataset" / "train" / pid / scan / v)
    # the table columns in another order, with an extra column, padded header names
    rep_cols = ["Unnamed: 0", " VolumeName", *REPORT_COLUMNS[1:][::-1]]
    reps = [
        [str(i), v, f"imp {i}", "" if i == 1 else f"find {i}", "Not given.", "ci"]
        for i, v in enumerate(names)
    ]
    (root / "dataset" / "radiology_text_reports").mkdir(parents=True)
    (root / "dataset" / "radiology_text_reports" / "train_reports.csv").write_bytes(
        _csv(rep_cols, reps, bom=True, crlf=True)
    )
    lab = [[v, *[str(float((i + k) % 2)) for k in range(18)]] for i, v in enumerate(names)]
    (root / "multi_abnormality_labels").mkdir()
    (root / "multi_abnormality_labels" / "train_predicted_labels.csv").write_bytes(
        _csv(["VolumeName", *ABNORMALITIES], lab[::-1], gz=True)
    )
    meta_cols = [
        "VolumeName",
        "Manufacturer",
        "XYSpacing",
        "ZSpacing",
        "RescaleIntercept",
        "RescaleSlope",
        "ImagePositionPatient",
    ]
    meta = [[v, "X", "[0.7, 0.71]", "1.5", "-1024", "1", ""] for v in names]
    (root / "metadata").mkdir()
    (root / "metadata" / "train_metadata.csv").write_bytes(_csv(meta_cols, meta, crlf=True))
    return names


def test_ct_rate_bom_crlf_gzip_column_order_nan_report(tmp_path):
    names = make_ct_rate(tmp_path)
    recs = read_records("ct-rate", tmp_path)
    assert [r["id"] for r in recs] == [n[: -len(".nii.gz")] for n in names]
    assert recs[2]["image"] == str(
        tmp_path / "dataset/train/train_12/train_12_a/train_12_a_1.nii.gz"
    )
    assert recs[1]["report"] == "" and recs[0]["report"] == "find 0"
    assert recs[0]["sections"]["impression"] == "imp 0"
    assert recs[0]["sections"]["clinical_information"] == "ci"
    np.testing.assert_array_equal(recs[1]["labels"], [(1 + k) % 2 for k in range(18)])
    assert recs[0]["meta"]["spacing"] == (0.7, 0.71, 1.5) and recs[0]["meta"]["origin"] is None


def test_short_csv_row_names_row_and_file(tmp_path):
    make_ct_rate(tmp_path)
    p = tmp_path / "metadata" / "train_metadata.csv"
    p.write_bytes(p.read_bytes() + b"train_9_a_1.nii.gz,X\r\n")
    with pytest.raises(DataError, match=r"train_metadata\.csv row 5 has 2 cells, the header has 7"):
        read_records("ct-rate", tmp_path)
    # stray trailing commas are not a short row
    p.write_bytes(
        p.read_bytes().replace(b"train_9_a_1.nii.gz,X\r\n", b"").replace(b"\r\n", b",\r\n")
    )
    assert len(read_records("ct-rate", tmp_path)) == 3


def test_picai_release_fold_folders_and_labels_checkout(tmp_path):
    cols = ["patient_id", "study_id", "lesion_PIRADS", "case_ISUP", "case_csPCa", "extra"]
    rows = [
        ["10000", "1000000", "N/A", "0", "NO", "x"],
        ["10001", "1000001", "4,5", "3", "YES", ""],
    ]
    sheet = tmp_path / "picai_labels" / "clinical_information" / "marksheet.csv"
    sheet.parent.mkdir(parents=True)
    sheet.write_bytes(_csv(cols, rows, bom=True, crlf=True))
    for fold, (pid, sid) in enumerate([("10000", "1000000"), ("10001", "1000001")]):
        for seq in ("t2w", "adc", "hbv", "sag", "cor"):
            _touch(tmp_path / f"picai_public_images_fold{fold}" / pid / f"{pid}_{sid}_{seq}.mha")
    mask = "csPCa_lesion_delineations/human_expert/resampled/10001_1000001.nii.gz"
    _touch(tmp_path / "picai_labels" / mask)
    recs = read_records("picai", tmp_path)
    assert recs[1]["sequences"]["dwi"] == str(
        tmp_path / "picai_public_images_fold1/10001/10001_1000001_hbv.mha"
    )
    assert recs[1]["pirads"] == 5 and recs[1]["case_csPCa"] == 1 and "pirads" not in recs[0]
    assert recs[1]["mask"] == str(tmp_path / "picai_labels" / mask) and "mask" not in recs[0]
    (tmp_path / "picai_public_images_fold1/10001/10001_1000001_adc.mha").unlink()
    with pytest.raises(DataError, match=r"marksheet\.csv row 3 \(10001_1000001\).*adc"):
        read_records("picai", tmp_path)


def make_mimic(root, chex_value="1.0"):
    studies = {  # study -> subject, split, [(dicom, view, extension)]
        "50414267": ("10000032", "train", [("d1", "PA", ".JPG")]),
        "53189527": (
            "10000032",
            "train",
            [
                ("e4", "LATERAL", ".jpg"),
                ("e3", "AP", ".jpg"),
                ("e2", "PA", ".jpg"),
                ("e1", "", ".jpg"),
            ],
        ),
    }
    meta, split, chex = [], [], []
    for study, (subj, sp, dicoms) in studies.items():
        d = root / "files" / f"p{subj[:2]}" / f"p{subj}"
        for dicom, view, ext in dicoms:
            _touch(d / f"s{study}" / f"{dicom}{ext}")
            meta.append([dicom, subj, study, view, "Extra"])
            split.append([dicom, study, subj, sp])
        chex.append([subj, study, *[chex_value if c == "Edema" else "" for c in CHEXPERT]])
        report = (
            f" FINAL REPORT\n FINDINGS: \n \n Lungs clear {study}.\n \n IMPRESSION: \n \n Normal.\n"
        ).replace("\n", "\r\n")
        (d / f"s{study}.txt").write_bytes(report.encode())
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").write_bytes(
        _csv(["dicom_id", "subject_id", "study_id", "ViewPosition", "X"], meta, gz=True)
    )
    # a plain CSV with the .csv name, Windows line endings and a BOM
    (root / "mimic-cxr-2.0.0-split.csv").write_bytes(
        _csv(["dicom_id", "study_id", "subject_id", "split"], split, bom=True, crlf=True)
    )
    (root / "mimic-cxr-2.0.0-chexpert.csv.gz").write_bytes(
        _csv(["subject_id", "study_id", *CHEXPERT], chex, gz=True)
    )


def test_mimic_cxr_one_and_four_images_upper_case_ext_crlf_reports(tmp_path):
    make_mimic(tmp_path)
    one, four = read_records("mimic-cxr", tmp_path)
    assert one["images"] == [str(tmp_path / "files/p10/p10000032/s50414267/d1.JPG")]
    assert [p.rsplit("/", 1)[1] for p in four["images"]] == ["e2.jpg", "e3.jpg", "e4.jpg", "e1.jpg"]
    assert one["report"] == "Lungs clear 50414267." and "\r" not in one["sections"]["impression"]
    assert one["labels"][CHEXPERT.index("Edema")] == 1 and one["labels"].sum() == 1


def test_mimic_cxr_bad_chexpert_code_names_row(tmp_path):
    make_mimic(tmp_path, chex_value="yes")
    with pytest.raises(DataError, match=r"chexpert\.csv\.gz row 2 \(study 50414267\).*'yes'"):
        read_records("mimic-cxr", tmp_path)


def test_manifest_jsonl_with_bom(tmp_path):
    _touch(tmp_path / "a.nii.gz")
    rows = [{"id": "a", "image": "a.nii.gz", "report": "r", "labels": [0, 1]}]
    (tmp_path / "m.jsonl").write_bytes(
        ("\ufeff" + "\r\n".join(json.dumps(r) for r in rows) + "\r\n").encode()
    )
    (rec,) = read_records("manifest", tmp_path / "m.jsonl")
    assert rec["image"] == str(tmp_path / "a.nii.gz") and rec["labels"].tolist() == [0, 1]


def test_m3d_cap_json_beside_its_volumes(tmp_path):
    d = tmp_path / "M3D_Cap_npy"
    _touch(d / "ct_case" / "000006" / "Axial.npy")
    (d / "ct_case" / "000006" / "text.txt").write_text("A report.\r\n")
    item = {"image": "ct_case/000006/Axial.npy", "text": "ct_case/000006/text.txt"}
    (d / "M3D_Cap.json").write_text(json.dumps({"train": [item]}))
    (rec,) = read_records("m3d-cap", tmp_path)
    assert rec["image"] == str(d / "ct_case/000006/Axial.npy") and rec["report"] == "A report."
    (d / "M3D_Cap.json").write_text(json.dumps({"train": [{"image": 3, "text": None}]}))
    with pytest.raises(DataError, match=r"M3D_Cap\.json train\[0\]: expected"):
        read_records("m3d-cap", tmp_path)


def test_amos_mm_labels_of_the_wrong_kind(tmp_path):
    _touch(tmp_path / "imagesTr" / "amos_0001.nii.gz")
    item = {"image": "./imagesTr/amos_0001.nii.gz", "labels": ["not", "an", "object"]}
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [item], "validation": []}))
    with pytest.raises(DataError, match=r"dataset\.json training\[0\] \(amos_0001\).*'labels'"):
        read_records("amos-mm", tmp_path)


@pytest.mark.parametrize(
    "fmt, name, obj, key",
    [
        ("amos-mm", "dataset.json", {"training": None}, "training"),
        ("m3d-cap", "M3D_Cap.json", {"train": 3}, "train"),
        ("ctrg-chest", "annotation.json", {"train": {"id": 1}}, "train"),
    ],
)
def test_split_that_is_not_a_list(tmp_path, fmt, name, obj, key):
    (tmp_path / name).write_text(json.dumps(obj))
    (tmp_path / "CTRG_finding_labels.csv").write_text("id,a\n1,0\n")
    (tmp_path / "volumes").mkdir()
    with pytest.raises(DataError, match=rf"{name} '{key}': expected a list of items, got"):
        read_records(fmt, tmp_path)


def test_manifest_sections_of_other_types_and_binary_split_file(tmp_path):
    _touch(tmp_path / "a.png")
    row = {"image": "a.png", "sections": {"findings": 3, "impression": None}}
    (tmp_path / "manifest.json").write_text(json.dumps([row]))
    (rec,) = read_records("manifest", tmp_path)
    assert rec["sections"] == {"findings": "3", "impression": ""} and rec["report"] == "3"
    (tmp_path / "train.txt").write_bytes(b"\xff\xfe\x00P-Target1 3")
    with pytest.raises(DataError, match=r"train\.txt is not a text split file"):
        read_records("prostate-biopsy", tmp_path)

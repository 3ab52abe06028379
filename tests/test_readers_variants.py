"""The readers on miniature copies of the public layouts in the variants the real downloads (and
the tables users re-save from them) come in, checked against what each source holds:

* CT-RATE (Hugging Face ibrahimhamamci/CT-RATE as TorchIO's ``datasets/ct_rate.py`` reads it):
  ``root`` = the repository or its ``dataset/`` folder, ``train_fixed/``, a pandas index column,
  a quoted multi-line report with Windows line ends, ``Not given.`` sections.
* CTRG-Chest (Dia-LLaMA's ``CTRG_Dataset``): annotation ids as int / str / padded / ``12.0``, a
  label table re-saved with an index column, other column order and names, blank and ``2.0`` cells.
* M3D (BAAI-DCAI/M3D ``multi_dataset.py``): ``root`` = the M3D-VQA folder, answer letters as
  ``a.`` / ``(B)``, an M3D_Cap.json holding captions inline.
* AMOS-MM (bowang-lab/AMOS-MM-Solution): answers as ``"B. text"``, ``"(c)"``, the option text,
  options as a list.
* PI-CAI: the first rows of DIAGNijmegen/picai_labels' real ``marksheet.csv`` (current header and
  the older one with pandas' index column and no PI-RADS columns), several studies per patient,
  picai_baseline's exported ``{"subject_list": [...]}`` splits.
* MIMIC-CXR: reports whose headers lack the leading space the real files have, or are mixed case;
  ids re-saved as ``50414267.0``; RRG24 rows with decoded ``images`` beside ``images_path``.
* ReportCollator edge cases: empty report, a report past ``max_length``, a batch of 1, a tokenizer
  without a pad token, left padding for generation, a transformers tokenizer.

Bad inputs are each a DataError naming the row and the file. Image files are empty: the readers
only check that they exist.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import pathlib

import numpy as np
import pytest
import torch

import voxlm.datasets as D
from voxlm.datasets import ReportCollator, read_records
from voxlm.datasets._common import read_csv, read_json
from voxlm.datasets.ct_rate import ABNORMALITIES, REPORT_COLUMNS
from voxlm.datasets.ctrg_chest import CONDITIONS
from voxlm.datasets.m3d import VQA_COLUMNS, answer_letter
from voxlm.datasets.mimic_cxr import CHEXPERT, report_sections
from voxlm.exceptions import ConfigError, DataError
from voxlm.llm import Tokenizer

TOK = pathlib.Path(D.__file__).parent / "ctrg_bpe_tokenizer.json"


def _csv(header, rows, *, bom=False, crlf=False, gz=False, index=False) -> bytes:
    """CSV bytes; ``index=True`` adds the unnamed index column ``DataFrame.to_csv`` writes."""
    if index:
        header = ["", *header]
        rows = [[str(i), *r] for i, r in enumerate(rows)]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n" if crlf else "\n").writerows([header, *rows])
    raw = (("\ufeff" if bom else "") + buf.getvalue()).encode()
    return gzip.compress(raw) if gz else raw


def _touch(p: pathlib.Path) -> pathlib.Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")
    return p


def _write(p: pathlib.Path, data: bytes | str) -> pathlib.Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


# -- the shared CSV / JSON reading ----


def test_csv_index_columns_duplicates_quoted_crlf_and_bad_bytes(tmp_path):
    text = 'a,,a,b,\r\n1,x,2,"line one\r\nline two",\r\n\r\n3,y,4,z\r\n'
    rows = read_csv(_write(tmp_path / "t.csv", "\ufeff" + text), "t")
    # the empty names become pandas' "Unnamed: <j>", the repeated "a" becomes "a.1"
    assert list(rows[0]) == ["a", "Unnamed: 1", "a.1", "b", "Unnamed: 4"]
    assert rows[0]["b"] == "line one\nline two" and rows[0]["a.1"] == "2"
    assert rows[1] == {"a": "3", "Unnamed: 1": "y", "a.1": "4", "b": "z", "Unnamed: 4": ""}
    with pytest.raises(DataError, match=r"s\.csv row 2 has 3 cells"):
        read_csv(_write(tmp_path / "s.csv", "a,b,c,d\n1,2,3\n"), "t")
    # a corrupt gzip (right magic, wrong stream) and Latin-1 bytes name the file
    with pytest.raises(DataError, match=r"bad\.csv\.gz"):
        read_csv(_write(tmp_path / "bad.csv.gz", b"\x1f\x8b\x08\x00garbage-bytes"), "t")
    with pytest.raises(DataError, match=r"latin\.csv.*UTF-8"):
        read_csv(_write(tmp_path / "latin.csv", "id,text\n1,caf\xe9\n".encode("latin-1")), "t")
    # a JSON file written with a BOM reads; a truncated one is a DataError naming it
    assert read_json(_write(tmp_path / "b.json", '\ufeff{"k": [1]}'), "t") == {"k": [1]}
    with pytest.raises(DataError, match=r"cut\.json is not valid JSON"):
        read_json(_write(tmp_path / "cut.json", '{"k": [1'), "t")


# -- CT-RATE ----


def make_ct_rate(base, names, fixed=False):
    for v in names:
        pid, scan = "_".join(v.split("_")[:2]), "_".join(v.split("_")[:3])
        _touch(base / ("train_fixed" if fixed else "train") / pid / scan / v)
    reps = [
        [v, "Not given.", "Non-contrast chest CT.", f"Heart normal {i}.\r\nLungs clear.", "None."]
        for i, v in enumerate(names)
    ]
    _write(
        base / "radiology_text_reports" / "train_reports.csv",
        _csv(REPORT_COLUMNS, reps, crlf=True, index=True),
    )
    lab = [[v, *["1.0" if k == i else "0" for k in range(18)]] for i, v in enumerate(names)]
    _write(
        base / "multi_abnormality_labels" / "train_predicted_labels.csv",
        _csv(["VolumeName", *ABNORMALITIES], lab, index=True),
    )
    meta_cols = ["VolumeName", "RescaleIntercept", "RescaleSlope", "XYSpacing", "ZSpacing"]
    meta = [[v, "-8192", "1.0", "[0.75, 0.75]", "1.5"] for v in names]
    _write(base / "metadata" / "train_metadata.csv", _csv(meta_cols, meta, index=True))


def test_ct_rate_root_is_the_dataset_folder_with_fixed_volumes(tmp_path):
    names = ["train_1_a_1.nii.gz", "train_1_a_2.nii.gz", "train_2_b_1.nii.gz"]
    make_ct_rate(tmp_path / "dataset", names, fixed=True)
    for root in (tmp_path, tmp_path / "dataset"):  # the repository or its dataset/ folder
        recs = read_records("ct-rate", root)
        assert [r["id"] for r in recs] == [n[:-7] for n in names]
        assert recs[2]["image"] == str(
            tmp_path / "dataset/train_fixed/train_2/train_2_b/train_2_b_1.nii.gz"
        )
        assert recs[0]["report"] == "Heart normal 0.\nLungs clear."
        assert recs[0]["sections"]["clinical_information"] == "Not given."
        assert recs[1]["labels"].tolist() == [int(k == 1) for k in range(18)]
        assert recs[0]["meta"]["rescale_intercept"] == -8192.0
    (tmp_path / "dataset/train_fixed/train_1/train_1_a/train_1_a_2.nii.gz").unlink()
    with pytest.raises(DataError, match=r"row 1 .*train_1_a_2.*does not exist"):
        read_records("ct-rate", tmp_path / "dataset")


# -- CTRG-Chest ----


def make_ctrg(root, ann, label_header, label_rows, index=False):
    for item in ann["train"]:
        _touch(root / "CTRG-Chest-548K_volume" / f"{str(item['id']).strip()}.nii.gz")
    _write(root / "annotation.json", json.dumps(ann))
    _write(root / "CTRG_finding_labels.csv", _csv(label_header, label_rows, index=index))


def test_ctrg_ids_of_every_kind_and_a_resaved_label_table(tmp_path):
    ann = {
        "train": [
            {"id": 3, "finding": "a"},
            {"id": "7", "finding": "b"},
            {"id": 12.0, "finding": ""},
        ],
        "val": [],
        "test": [],
    }
    ann["train"][2]["id"] = 12.0
    # pandas' index column first, Title Case names, the last two columns swapped, blank and float
    names = [c.title() for c in CONDITIONS]
    header = ["id", *names[:-2], names[-1], names[-2]]
    code = {3: ["1"] + ["2"] * 11 + ["3", ""], 7: ["2.0"] * 14, 12: [""] * 13 + ["1"]}
    make_ctrg(tmp_path, ann, header, [[str(k), *v] for k, v in code.items()], index=True)
    (tmp_path / "CTRG-Chest-548K_volume" / "12.0.nii.gz").rename(
        tmp_path / "CTRG-Chest-548K_volume" / "12.nii.gz"
    )
    recs = read_records("ctrg-chest", tmp_path)
    assert [r["id"] for r in recs] == ["3", "7", "12"]
    assert recs[2]["image"] == str(tmp_path / "CTRG-Chest-548K_volume" / "12.nii.gz")
    assert recs[0]["label_names"] == CONDITIONS
    # file order ... 'No Finding', 'Support Devices' -> CONDITIONS order ... support, no finding
    assert recs[0]["label_codes"].tolist() == [1] + [2] * 11 + [0, 3]
    assert recs[1]["label_codes"].tolist() == [2] * 14
    assert recs[2]["labels"].tolist() == [0] * 12 + [1, 0]  # 'Support Devices' positive
    assert recs[2]["report"] == ""


@pytest.mark.parametrize(
    "ann_item, row, match",
    [
        ({"id": 3, "finding": None}, ["3", *["0"] * 14], r"train\[0\] \(id 3\).*'finding'"),
        ({"id": 3, "finding": "x"}, ["3", "5", *["0"] * 13], r"row 2 \(id 3\).*codes are 0"),
        ({"id": 3, "finding": "x"}, ["3", "pos", *["0"] * 13], r"row 2 \(id '3'\)"),
        ({"id": 4, "finding": "x"}, ["3", *["0"] * 14], r"\(id 4\): no row with this id"),
        ({"id": "x3", "finding": "x"}, ["3", *["0"] * 14], r"id 'x3' is not an integer"),
    ],
)
def test_ctrg_bad_rows_name_row_and_file(tmp_path, ann_item, row, match):
    make_ctrg(tmp_path, {"train": [ann_item]}, ["id", *CONDITIONS], [row])
    with pytest.raises(DataError, match=match):
        read_records("ctrg-chest", tmp_path)


# -- M3D ----


def test_answer_letter_spellings():
    assert [answer_letter(v) for v in ["A", " b ", "C.", "(D)", "A. liver", "a)"]] == list("ABCDAA")
    assert [answer_letter(v) for v in ["E", "", None, "Axial", "Both"]] == [None] * 5


def test_m3d_vqa_root_is_the_vqa_folder_and_answer_spellings(tmp_path):
    _touch(tmp_path / "M3D_Cap_npy/ct_case/000006/Axial.npy")
    rows = [
        ["M3D_Cap_npy/ct_case/000006/Axial.npy", "rep", "1", "Which plane?", "Axial", "Sagittal",
         "Coronal", "Oblique", "Axial", "a."],
        ["M3D_Cap_npy/ct_case/000006/Axial.npy", "rep", "4.0", "Abnormal?", "x", "y", "z", "w",
         "y", " (B) "],
    ]  # fmt: skip
    _write(tmp_path / "M3D-VQA" / "M3D_VQA_train.csv", _csv(VQA_COLUMNS, rows, crlf=True))
    for root in (tmp_path, tmp_path / "M3D-VQA"):
        recs = read_records("m3d-vqa", root)
        assert recs[0]["image"] == str(tmp_path / "M3D_Cap_npy/ct_case/000006/Axial.npy")
        assert [r["answer"] for r in recs] == ["A", "B"]
        assert [r["question_type"] for r in recs] == ["plane", "abnormality"]
    rows[1][-1] = "E"
    _write(tmp_path / "M3D-VQA" / "M3D_VQA_train.csv", _csv(VQA_COLUMNS, rows))
    with pytest.raises(DataError, match=r"M3D_VQA_train\.csv row 3: Answer Choice 'E'"):
        read_records("m3d-vqa", tmp_path)


def test_m3d_cap_json_with_inline_captions(tmp_path):
    _touch(tmp_path / "ct_case/000006/Axial.npy")
    data = {
        "train": [{"image": "ct_case/000006/Axial.npy", "text": "Liver lesion.\r\nNo ascites."}]
    }
    _write(tmp_path / "M3D_Cap.json", json.dumps(data))
    (rec,) = read_records("m3d-cap", tmp_path)
    assert rec["report"] == "Liver lesion.\nNo ascites."
    assert rec["image"] == str(tmp_path / "ct_case/000006/Axial.npy")
    data["train"][0]["text"] = "ct_case/000006/text.txt"  # a path: the file must exist
    _write(tmp_path / "M3D_Cap.json", json.dumps(data))
    with pytest.raises(DataError, match=r"train\[0\].*text file .*text\.txt does not exist"):
        read_records("m3d-cap", tmp_path)


# -- AMOS-MM ----


def test_amos_answer_spellings_and_options_as_a_list(tmp_path):
    _touch(tmp_path / "imagesTr" / "amos_0001.nii.gz")
    opts = {"A": "liver", "B": "spleen", "C": "kidney", "D": "bladder"}
    qa = [
        {"question": "q0", "options": opts, "answer": "B. spleen", "type": "organ"},
        {"question": "q1", "options": opts, "answer": "(c)"},
        {"question": "q2", "options": opts, "answer": " Bladder "},
        {"question": "q3", "options": ["x", "y", "z", "w"], "answer": "D"},
    ]
    item = {"image": "./imagesTr/amos_0001.nii.gz", "labels": {"qa": qa}}
    _write(tmp_path / "vqa_train_val.json", json.dumps({"training": [item], "validation": []}))
    recs = read_records("amos-mm", tmp_path, task="vqa")
    assert [r["answer"] for r in recs] == ["B", "C", "D", "D"]
    assert [r["answer_text"] for r in recs] == ["spleen", "kidney", "bladder", "w"]
    assert recs[3]["choices"] == {"A": "x", "B": "y", "C": "z", "D": "w"}
    assert recs[0]["image"] == str(tmp_path / "imagesTr" / "amos_0001.nii.gz")
    qa.append({"question": "q4", "options": opts, "answer": "pancreas"})
    _write(tmp_path / "vqa_train_val.json", json.dumps({"training": [item], "validation": []}))
    with pytest.raises(DataError, match=r"training\[0\] \(amos_0001\) qa\[4\]: answer 'pancreas'"):
        read_records("amos-mm", tmp_path, task="vqa")


# -- PI-CAI ----

# the first rows of DIAGNijmegen/picai_labels clinical_information/marksheet.csv (ce4a472), plus a
# second study of patient 10000 and one row as pandas re-saves it (floats)
MARKSHEET = """\
patient_id,study_id,mri_date,patient_age,psa,psad,prostate_volume,histopath_type,lesion_PIRADS,\
lesion_GS,lesion_ISUP,case_ISUP,case_csPCa,center
10000,1000000,2019-07-02,73,7.7,,55,MRBx,4,0+0,0,0,NO,PCNN
10001,1000001,2016-05-27,64,8.7,0.09,102,,2,,,0,NO,RUMC
10008,1000008,2020-12-06,81,11.1,0.2,56,SysBx+MRBx,"5,N/A","4+3,3+4","3,2",3,YES,ZGT
10019,1000019,2012-12-15,61,10,0.24,42,MRBx,"2,2,2,5","N/A,N/A,N/A,3+4",2,2,YES,RUMC
10000,1000600,2021-01-02,75,9.1,,57,,,,,,,PCNN
10020,1000020,2017-02-24,43,4.6,0.11,47,MRBx,"4.0,3.0",3+4,2.0,2.0,YES,RUMC
"""
# the older release: pandas' index column, no PI-RADS / ISUP / csPCa columns (358f0af)
MARKSHEET_OLD = """\
,patient_id,study_id,mri_date,patient_age,psa,psad,prostate_volume,histopath_type,lesion_GS
0,10000,1000000,2019-07-02,74,7.7,,55,MRBx,0+0
1,10001,1000001,2016-05-27,64,8.7,0.09,102,,
8,10008,1000008,2020-12-06,81,11.1,0.2,56,SysBx+MRBx,"4+3,3+4"
19,10019,1000019,2012-12-15,61,10,0.24,42,MRBx,"N/A,N/A,N/A,3+4"
"""


def make_picai(root, sheet):
    _write(root / "clinical_information" / "marksheet.csv", sheet)
    for row in csv.DictReader(io.StringIO(sheet)):
        pid, sid = row["patient_id"], row["study_id"]
        for seq in ("t2w", "adc", "hbv", "sag", "cor"):
            _touch(root / pid / f"{pid}_{sid}_{seq}.mha")


def test_picai_real_marksheet_rows_and_several_studies_per_patient(tmp_path):
    make_picai(tmp_path, MARKSHEET)
    recs = {r["id"]: r for r in read_records("picai", tmp_path)}
    assert len(recs) == 6
    r = recs["10008_1000008"]
    assert (r["pirads"], r["lesion_pirads"], r["isup"], r["case_csPCa"]) == (5, [5], 3, 1)
    assert r["meta"]["lesion_isup"] == [3, 2] and r["meta"]["center"] == "ZGT"
    assert recs["10019_1000019"]["lesion_pirads"] == [2, 2, 2, 5]
    assert (recs["10000_1000000"]["pirads"], recs["10000_1000000"]["case_csPCa"]) == (4, 0)
    # the second study of patient 10000: same folder, its own files, nothing scored
    second = recs["10000_1000600"]
    assert second["sequences"]["dwi"] == str(tmp_path / "10000" / "10000_1000600_hbv.mha")
    assert "pirads" not in second and "isup" not in second and "labels" not in second
    f = recs["10020_1000020"]  # "4.0,3.0" is [4, 3], not [4, 0, 3, 0]
    assert (f["lesion_pirads"], f["isup"], f["labels"].tolist()) == ([4, 3], 2, [1])


def test_picai_older_marksheet_with_index_column(tmp_path):
    make_picai(tmp_path, MARKSHEET_OLD)
    recs = {r["id"]: r for r in read_records("picai", tmp_path)}
    assert recs["10008_1000008"]["isup"] == 3 and recs["10008_1000008"]["case_csPCa"] == 1
    assert recs["10000_1000000"]["isup"] == 0 and recs["10000_1000000"]["case_csPCa"] == 0
    assert recs["10019_1000019"]["meta"]["lesion_isup"] == [2]
    assert "isup" not in recs["10001_1000001"]  # no biopsy: no grade, no label
    assert all(r["lesion_pirads"] == [] for r in recs.values())


def test_picai_baseline_splits_and_bad_split_files(tmp_path):
    make_picai(tmp_path, MARKSHEET)
    splits = {
        "train": {"subject_list": ["10000_1000000", "10008_1000008"], "num_cases": 2},
        "val": {"subject_list": ["10019_1000019"]},
    }
    _write(tmp_path / "folds.json", json.dumps(splits))
    tr = read_records("picai", tmp_path, splits=str(tmp_path / "folds.json"))
    va = read_records("picai", tmp_path, split="validation", splits=splits)
    assert [r["id"] for r in tr] == ["10000_1000000", "10008_1000008"]
    assert [r["id"] for r in va] == ["10019_1000019"]
    _write(tmp_path / "cut.json", '{"train": ["10000_1000000"')
    with pytest.raises(DataError, match=r"splits file .*cut\.json is not valid JSON"):
        read_records("picai", tmp_path, splits=str(tmp_path / "cut.json"))
    with pytest.raises(DataError, match=r"'train': expected a list of subject ids"):
        read_records("picai", tmp_path, splits={"train": "10000_1000000"})


def test_picai_bad_scores_name_the_row(tmp_path):
    bad = MARKSHEET.replace('"2,2,2,5"', '"2,high"')
    make_picai(tmp_path, bad)
    with pytest.raises(DataError, match=r"marksheet\.csv row 5 \(10019_1000019\): lesion_PIRADS"):
        read_records("picai", tmp_path)
    make_picai(tmp_path, MARKSHEET.replace('"3,2",3,YES', '"3,x",3,YES'))
    with pytest.raises(DataError, match=r"row 4 \(10008_1000008\): lesion_ISUP '3,x'"):
        read_records("picai", tmp_path)


# -- MIMIC-CXR ----


@pytest.mark.parametrize(
    "text",
    [
        "FINDINGS: Lungs are clear.\nIMPRESSION: No acute process.",
        "Findings:\nLungs are clear.\n\nImpression :  No acute process.\n",
        "EXAMINATION: CHEST PA AND LAT\r\nFINDINGS:  Lungs are clear.\r\n"
        "IMPRESSION: No acute process.",
    ],
)
def test_report_headers_without_the_leading_space_or_in_mixed_case(text):
    s = report_sections(text.replace("\r\n", "\n"))
    assert s == {"findings": "Lungs are clear.", "impression": "No acute process."}


def test_reference_parse_is_kept_for_real_style_reports():
    real = (
        "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n"
        " INDICATION:  ___F with cough\n \n COMPARISON:  None.\n \n FINDINGS: \n \n"
        " Note: heart size normal.  Lungs clear.\n \n IMPRESSION: \n \n No acute process.\n"
    )
    assert report_sections(real) == {
        "findings": "Note: heart size normal.  Lungs clear.",
        "impression": "No acute process.",
    }
    assert report_sections("No headers at all.") == {"findings": "", "impression": ""}


def test_mimic_ids_resaved_as_floats_and_plain_headers(tmp_path):
    subj, study = "10000032", "50414267"
    d = tmp_path / "files" / "p10" / f"p{subj}"
    _touch(d / f"s{study}" / "d1.jpg")
    _write(d / f"s{study}.txt", "FINDINGS: Clear lungs.\nIMPRESSION: Normal.\n")
    _write(
        tmp_path / "mimic-cxr-2.0.0-split.csv",
        _csv(
            ["dicom_id", "study_id", "subject_id", "split"], [["d1", study + ".0", subj, "train"]]
        ),
    )
    _write(
        tmp_path / "mimic-cxr-2.0.0-metadata.csv",
        _csv(["dicom_id", "subject_id", "study_id", "ViewPosition"], [["d1", subj, study, "PA"]]),
    )
    codes = ["-1.0" if c == "Edema" else ("1" if c == "Cardiomegaly" else "") for c in CHEXPERT]
    _write(
        tmp_path / "mimic-cxr-2.0.0-chexpert.csv",
        _csv(["subject_id", "study_id", *CHEXPERT], [[subj + ".0", study + ".0", *codes]]),
    )
    (rec,) = read_records("mimic-cxr", tmp_path)
    assert rec["id"] == study and rec["report"] == "Clear lungs."
    assert rec["images"] == [str(d / f"s{study}" / "d1.jpg")]
    assert rec["labels"].tolist() == [int(c == "Cardiomegaly") for c in CHEXPERT]
    assert rec["label_codes"][CHEXPERT.index("Edema")] == -1.0
    assert np.isnan(rec["label_codes"][CHEXPERT.index("Atelectasis")])


def test_rrg24_rows_with_decoded_images_beside_images_path(tmp_path):
    _touch(tmp_path / "files/p10/a.jpg")
    _touch(tmp_path / "files/p10/b.jpg")
    rows = [
        {"images": [{"bytes": None}], "images_path": ["files/p10/a.jpg", "files/p10/b.jpg"],
         "findings": "Clear.", "impression": "", "source": "MIMIC-CXR"},
        {"images_path": "files/p10/a.jpg", "findings": "One view.", "impression": "Normal."},
        {"images": [], "findings": "none", "impression": ""},
    ]  # fmt: skip
    _write(tmp_path / "rrg.jsonl", "\n".join(json.dumps(r) for r in rows[:2]))
    a, b = read_records("mimic-cxr", tmp_path, rrg24=str(tmp_path / "rrg.jsonl"))
    assert a["images"] == [str(tmp_path / "files/p10/a.jpg"), str(tmp_path / "files/p10/b.jpg")]
    assert b["images"] == [str(tmp_path / "files/p10/a.jpg")] and b["report"] == "One view."
    _write(tmp_path / "rrg.json", json.dumps(rows))
    with pytest.raises(DataError, match=r"rrg\.json record 2: expected 'images': \[paths\]"):
        read_records("mimic-cxr", tmp_path, rrg24=str(tmp_path / "rrg.json"))


# -- ReportCollator edge cases ----


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(TOK, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _item(i, report, shape=(1, 2, 2, 2)):
    return {"id": str(i), "image": torch.full(shape, float(i)), "report": report}


def test_collator_empty_report_batch_of_one_and_truncation(tok):
    col = ReportCollator(tok, num_image_tokens=3, max_length=16, prompt="Report: ")
    im, eos = tok.token_to_id("<im_patch>"), tok.eos_token_id
    b = col([_item(0, "")])  # a batch of one, an empty report: the target is EOS alone
    prompt = b["input_ids"][0, :-1].tolist()
    assert prompt[0] == tok.bos_token_id and prompt[1:4] == [im] * 3
    assert b["labels"][0].tolist() == [-100] * len(prompt) + [eos]
    assert b["images"].shape == (1, 1, 2, 2, 2)
    long = " ".join(["pleural effusion"] * 40)
    b = col([_item(0, long), _item(1, "ok")])
    # M3D/LLaVA cut the whole sequence at max_length; here the target is cut, the prompt with its
    # image placeholders stays whole and the target keeps its EOS
    assert b["input_ids"].shape == (2, 16) and b["attention_mask"][0].sum() == 16
    assert b["input_ids"][0, : len(prompt)].tolist() == prompt
    assert b["input_ids"][0, -1] == eos and b["labels"][0, -1] == eos
    assert (b["labels"][0] != -100).sum() == 16 - len(prompt)
    assert (b["input_ids"] == im).sum(1).tolist() == [3, 3]


def test_collator_tokenizer_without_pad_token_and_left_padding(tok):
    nopad = Tokenizer(TOK, bos_token="<s>", eos_token="</s>")
    assert nopad.pad_token_id is None
    items = [_item(0, "no acute findings in the chest"), _item(1, "ok")]
    a = ReportCollator(nopad, 2, 64)(items)
    ref = ReportCollator(tok, 2, 64)(items)
    n = int(ref["attention_mask"][1].sum())
    # padded with EOS; the true EOS keeps its label, the padding is -100 and masked out
    assert (a["input_ids"][1, n:] == nopad.eos_token_id).all()
    assert (a["labels"][1, n:] == -100).all() and a["labels"][1, n - 1] == nopad.eos_token_id
    assert torch.equal(a["attention_mask"], ref["attention_mask"])
    assert torch.equal(a["labels"], ref["labels"])
    g = ReportCollator(tok, 2, 64, mode="generate")(items)
    # generation pads on the left: every prompt ends at the last column
    assert g["attention_mask"][:, -1].tolist() == [1, 1] and "labels" not in g
    assert g["references"] == [it["report"] for it in items]
    assert (g["input_ids"][:, 1:3] == tok.token_to_id("<im_patch>")).all()


def test_collator_refuses_mixed_batches_and_placeholders_in_the_target(tok):
    col = ReportCollator(tok, 2, 64)
    with pytest.raises(DataError, match=r"some items of one batch have loaded 'image'.*\['1'\]"):
        col([_item(0, "a"), {"id": "1", "report": "b"}])
    with pytest.raises(DataError, match=r"have loaded 'image' tensors.*without: \['1'\]"):
        col([_item(0, "a"), {"id": "1", "image": "/data/x.nii.gz", "report": "b"}])
    # records with paths only are tokenized (no images in the batch), as recipes' checks use them
    b = col([{"id": "0", "image": "/data/x.nii.gz", "report": "a"}])
    assert "images" not in b and b["input_ids"].shape[0] == 1
    with pytest.raises(DataError, match=r"target of record '0' contains the image placeholder"):
        col([_item(0, "text <im_patch> more")])


def test_collator_with_a_transformers_tokenizer_equals_voxlm_tokenizer(tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(TOK), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    items = [_item(0, "no acute findings"), _item(1, "ok")]
    a = ReportCollator(hf, 4, 64, prompt="Report: ")(items)
    b = ReportCollator(tok, 4, 64, prompt="Report: ")(items)
    for k in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(Exception, match=r"image_token: '<nope>' is not a token"):
        ReportCollator(hf, 4, 64, image_token="<nope>")


# -- partial downloads, manifests in other shapes ---------------------------------------------


def test_missing_skip_reads_a_partial_download(tmp_path):
    names = ["train_1_a_1.nii.gz", "train_1_a_2.nii.gz", "train_2_b_1.nii.gz"]
    make_ct_rate(tmp_path / "dataset", names)
    (tmp_path / "dataset/train/train_1/train_1_a/train_1_a_2.nii.gz").unlink()
    with pytest.raises(DataError, match=r"train_1_a_2\.nii\.gz does not exist"):
        read_records("ct-rate", tmp_path)
    recs = read_records("ct-rate", tmp_path, missing="skip")
    assert [r["id"] for r in recs] == ["train_1_a_1", "train_2_b_1"]
    assert recs[1]["labels"].tolist() == [int(k == 2) for k in range(18)]
    for v in ("train_1/train_1_a/train_1_a_1.nii.gz", "train_2/train_2_b/train_2_b_1.nii.gz"):
        (tmp_path / "dataset/train" / v).unlink()
    with pytest.raises(DataError, match=r"none of the 3 records of split 'train'"):
        read_records("ct-rate", tmp_path, missing="skip")
    with pytest.raises(ConfigError, match=r"data.missing: expected 'error' or 'skip'"):
        read_records("ct-rate", tmp_path, missing="ignore")


def test_manifest_json_of_split_lists_and_tsv(tmp_path):
    _touch(tmp_path / "vol" / "a.nii.gz")
    _touch(tmp_path / "vol" / "b.nii.gz")
    data = {
        "train": [{"id": 1, "image": "vol/a.nii.gz", "report": "r1", "labels": [0, 1]}],
        "val": [{"id": 2, "image": "vol/b.nii.gz", "findings": "f2", "impression": "i2"}],
    }
    _write(tmp_path / "m.json", json.dumps(data))
    (tr,) = read_records("manifest", tmp_path / "m.json")
    (va,) = read_records("manifest", tmp_path / "m.json", split="validation")
    assert (tr["id"], tr["image"], tr["labels"].tolist()) == (
        "1",
        str(tmp_path / "vol/a.nii.gz"),
        [0, 1],
    )
    assert va["report"] == "f2\n\ni2" and va["split"] == "validation"
    _write(tmp_path / "m.tsv", "id\timage\treport\n7\tvol/b.nii.gz\tone, two\n")
    (t,) = read_records("manifest", tmp_path / "m.tsv")
    assert (t["id"], t["report"], t["image"]) == ("7", "one, two", str(tmp_path / "vol/b.nii.gz"))
    data["val"][0]["image"] = "vol/gone.nii.gz"
    _write(tmp_path / "m.json", json.dumps(data))
    with pytest.raises(DataError, match=r"m\.json item 1 \(id '2'\): image file .*gone"):
        read_records("manifest", tmp_path / "m.json", split="val")


def test_ctrg_zip_nested_volume_folder_and_plain_nii(tmp_path):
    ann = {"train": [{"id": 1, "finding": "a"}, {"id": 2, "finding": "b"}]}
    make_ctrg(tmp_path, ann, ["id", *CONDITIONS], [[str(k), *["0"] * 14] for k in (1, 2)])
    top = tmp_path / "CTRG-Chest-548K_volume"
    nested = top / "CTRG-Chest-548K_volume"
    nested.mkdir()
    (top / "1.nii.gz").rename(nested / "1.nii.gz")
    (top / "2.nii.gz").rename(nested / "2.nii")
    a, b = read_records("ctrg-chest", tmp_path)
    assert (a["image"], b["image"]) == (str(nested / "1.nii.gz"), str(nested / "2.nii"))


def test_option_given_as_one_string(tmp_path):
    subj, study = "10000032", "50414267"
    d = tmp_path / "files" / "p10" / f"p{subj}"
    for dicom in ("pa", "lat"):
        _touch(d / f"s{study}" / f"{dicom}.jpg")
    _write(d / f"s{study}.txt", " FINDINGS: Clear.\n")
    split = [[x, study, subj, "train"] for x in ("pa", "lat")]
    _write(
        tmp_path / "mimic-cxr-2.0.0-split.csv",
        _csv(["dicom_id", "study_id", "subject_id", "split"], split),
    )
    meta = [["pa", subj, study, "PA"], ["lat", subj, study, "LATERAL"]]
    _write(
        tmp_path / "mimic-cxr-2.0.0-metadata.csv",
        _csv(["dicom_id", "subject_id", "study_id", "ViewPosition"], meta),
    )
    (rec,) = read_records("mimic-cxr", tmp_path, views="PA")  # not the views "P" and "A"
    assert rec["meta"]["views"] == ["PA"]
    _touch(tmp_path / "a.nii.gz")
    _write(tmp_path / "m.csv", "image,finding_x\na.nii.gz,1\n")
    (m,) = read_records("manifest", tmp_path / "m.csv", label_columns="finding_x")
    assert (m["labels"].tolist(), m["label_names"]) == ([1], ["finding_x"])


@pytest.mark.parametrize(
    "xy, z, ok",
    [
        ("['0.75', '0.75']", "1.5", True),
        ("(0.75 0.75)", "1.5", True),
        ("0.75\\0.75", "1.5", True),
        ("[0.75]", "1.5", False),
        ("[nan, 0.75]", "1.5", False),
        ("[0.75, 0.75]", "0", False),
        ("[0.75, 0.75]", "", False),
    ],
)
def test_ct_rate_spacing_spellings(tmp_path, xy, z, ok):
    make_ct_rate(tmp_path / "dataset", ["train_1_a_1.nii.gz"])
    meta_cols = ["VolumeName", "RescaleIntercept", "RescaleSlope", "XYSpacing", "ZSpacing"]
    _write(
        tmp_path / "dataset/metadata/train_metadata.csv",
        _csv(meta_cols, [["train_1_a_1.nii.gz", "-1024", "1", xy, z]]),
    )
    if ok:
        (rec,) = read_records("ct-rate", tmp_path)
        assert rec["meta"]["spacing"] == (0.75, 0.75, 1.5)
    else:
        with pytest.raises(DataError, match=r"train_metadata\.csv row 2: (XY|Z)Spacing"):
            read_records("ct-rate", tmp_path)


def test_ct_rate_label_that_is_not_0_or_1(tmp_path):
    make_ct_rate(tmp_path / "dataset", ["train_1_a_1.nii.gz"])
    lab = [["train_1_a_1.nii.gz", "2", *["0"] * 17]]
    _write(
        tmp_path / "dataset/multi_abnormality_labels/train_predicted_labels.csv",
        _csv(["VolumeName", *ABNORMALITIES], lab),
    )
    with pytest.raises(DataError, match=r"predicted_labels\.csv row 2 .*expected 0/1 labels"):
        read_records("ct-rate", tmp_path)


def test_amos_json_of_another_name_is_found_by_its_content(tmp_path):
    _touch(tmp_path / "imagesVa" / "amos_0002.nii.gz")
    find = {"chest": "Clear.", "abdomen": "", "pelvis": "Normal bladder."}
    item = {"image": "./imagesVa/amos_0002.nii.gz", "labels": {"report": {"findings": find}}}
    _write(tmp_path / "notes.json", json.dumps({"comment": "not a split list"}))
    _write(tmp_path / "amos_mm_reports.json", json.dumps({"training": [], "validation": [item]}))
    (rec,) = read_records("amos-mm", tmp_path, split="validation")
    assert rec["report"] == "Clear.\nNormal bladder." and rec["id"] == "amos_0002"
    with pytest.raises(DataError, match=r"the vqa JSON at one of: .*vqa_train_val\.json"):
        read_records("amos-mm", tmp_path, task="vqa")


def test_collator_with_a_raw_tokenizers_tokenizer(tok):
    tokenizers = pytest.importorskip("tokenizers")
    raw = tokenizers.Tokenizer.from_file(str(TOK))  # encode() gives an Encoding; no BOS/EOS
    items = [_item(0, "no acute findings"), _item(1, "ok")]
    kw = {"prompt": "Report: ", "add_bos": False, "add_eos": False}
    a = ReportCollator(raw, 4, 64, **kw)(items)
    b = ReportCollator(tok, 4, 64, **kw)(items)
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(
        a["attention_mask"], b["attention_mask"]
    )
    with pytest.raises(ConfigError, match="add_eos: the tokenizer has no eos_token"):
        ReportCollator(raw, 4, 64)
    with pytest.raises(ConfigError, match=r"tokenizer: expected an object with encode"):
        ReportCollator(object(), 0, 64, add_eos=False)


def test_picai_marksheet_resaved_with_float_ids(tmp_path):
    make_picai(tmp_path, MARKSHEET)
    sheet = MARKSHEET.replace("\n10001,1000001,", "\n10001.0,1000001.0,")
    _write(tmp_path / "clinical_information" / "marksheet.csv", sheet)
    recs = read_records("picai", tmp_path)
    assert recs[1]["id"] == "10001_1000001"
    assert recs[1]["sequences"]["t2w"] == str(tmp_path / "10001" / "10001_1000001_t2w.mha")


def test_prostate_biopsy_split_lines_as_picg_writes_them(tmp_path):
    # the first lines of med-air/PICG2scoring scoring_train/data/public_train.txt, the last one
    # without its newline (the reference's line[:-1] would cut the score's digit), a tab, "3.0"
    lines = "Prostate-MRI-US-Biopsy-0001-Target1 3\nProstate-MRI-US-Biopsy-0003-Target2\t4.0\n"
    lines += "Prostate-MRI-US-Biopsy-0005-Target1 5"
    _write(tmp_path / "public_train.txt", lines)
    for case, t in [("0001", 1), ("0003", 2), ("0005", 1)]:
        c = f"Prostate-MRI-US-Biopsy-{case}"
        for seq in ("T2W", "ADC", "DWI"):
            _touch(tmp_path / c / f"{c}_{seq}_Target{t}.nii.gz")
    recs = read_records("prostate-biopsy", tmp_path)
    assert [(r["id"][-12:], r["pirads"]) for r in recs] == [
        ("0001-Target1", 3),
        ("0003-Target2", 4),
        ("0005-Target1", 5),
    ]
    assert recs[1]["sequences"]["dwi"].endswith("Prostate-MRI-US-Biopsy-0003_DWI_Target2.nii.gz")
    _write(tmp_path / "public_train.txt", lines.replace("4.0", "4.5"))
    with pytest.raises(DataError, match=r"public_train\.txt line 2: PI-RADS '4\.5'"):
        read_records("prostate-biopsy", tmp_path)


def test_collator_study_without_images_and_views_of_other_sizes(tok):
    col = ReportCollator(tok, 0, 32)
    assert "images" not in col([{"id": "a", "images": [], "report": "x"}])
    two = [torch.zeros(1, 2, 2), torch.ones(1, 2, 2)]
    assert col([{"id": "a", "images": two, "report": "x"}])["images"].shape == (1, 2, 1, 2, 2)
    odd = [torch.zeros(1, 2, 2), torch.ones(1, 3, 2)]  # views of other sizes: kept as a list
    b = col([{"id": "a", "images": odd, "report": "x"}])
    assert isinstance(b["images"], list) and b["images"][0][1].shape == (1, 3, 2)


def test_m3d_paths_with_or_without_the_leading_folder(tmp_path):
    _touch(tmp_path / "M3D_Cap_npy/ct_quizze/012247/Axial.npy")
    _write(tmp_path / "M3D_Cap_npy/ct_quizze/012247/text.txt", "Report.")
    row = ["ct_quizze/012247/Axial.npy", "rep", "3", "Organ?", "a", "b", "c", "d", "a", "A"]
    _write(tmp_path / "M3D-VQA" / "M3D_VQA_val.csv", _csv(VQA_COLUMNS, [row]))
    (v,) = read_records("m3d-vqa", tmp_path, split="val")
    assert v["image"] == str(tmp_path / "M3D_Cap_npy/ct_quizze/012247/Axial.npy")
    for prefix in ("", "M3D_Cap_npy/"):
        item = {
            "image": f"{prefix}ct_quizze/012247/Axial.npy",
            "text": f"{prefix}ct_quizze/012247/text.txt",
        }
        _write(tmp_path / "M3D_Cap.json", json.dumps({"test": [item]}))
        (c,) = read_records("m3d-cap", tmp_path, split="test")
        assert c["image"] == v["image"] and c["report"] == "Report."


@pytest.mark.parametrize("fmt", ["ct-rate", "ctrg-chest", "picai", "mimic-cxr", "manifest"])
def test_root_and_split_of_the_wrong_kind(fmt):
    with pytest.raises(ConfigError, match=r"data.root: expected the dataset folder .*got 5"):
        read_records(fmt, 5)
    with pytest.raises(ConfigError, match=r"data.split: expected a split name .*got 3"):
        read_records(fmt, "/nonexistent", split=3)

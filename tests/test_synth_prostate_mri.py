"""voxlm.synth.prostate_mri: the PI-RADS-style rules, lesions that look like their score, the
PI-CAI layout read back by SimpleITK (.mha) / nibabel (masks) / voxlm's picai reader, the PICG
crops + split lines by nibabel and the prostate-biopsy reader, MR DICOM by pydicom."""

import csv
import importlib
import json

import numpy as np
import pytest

from voxlm import synth
from voxlm.exceptions import ConfigError

P = importlib.import_module("voxlm.synth.prostate_mri")
sitk = pytest.importorskip("SimpleITK")
SMALL = (12, 64, 64)


@pytest.fixture(scope="module")
def picai(tmp_path_factory):
    return synth.prostate_mri(
        tmp_path_factory.mktemp("pm") / "picai", 10, seed=3, shape=SMALL, dicom_every=10
    )


def test_rules():
    s = P.pirads_score
    assert s("pz", 10, 0.05, 0.05, "none") == 1
    assert s("pz", 10, 0.15, 0.1, "wedge") == 2
    assert s("pz", 10, 0.3, 0.1, "heterogeneous") == 3
    assert s("pz", 10, 0.1, 0.4, "none") == 3  # DWI alone, mild/moderate
    assert s("pz", 14.9, 0.5, 0.7, "lenticular") == 4
    assert s("pz", 15, 0.5, 0.7, "lenticular") == 5
    assert s("pz", 10, 0.5, 0.7, "lenticular", epe=True) == 5
    assert s("pz", 20, 0.44, 0.9, "lenticular") == 3  # not markedly dark on ADC: not 4/5
    assert s("tz", 10, 0.0, 0.0, "encapsulated") == 1
    assert s("tz", 10, 0.2, 0.2, "circumscribed") == 2
    assert s("tz", 10, 0.5, 0.7, "circumscribed") == 3  # the DWI upgrade
    assert s("tz", 10, 0.1, 0.1, "heterogeneous") == 3
    assert s("tz", 10, 0.1, 0.1, "lenticular") == 4
    assert s("tz", 16, 0.1, 0.1, "lenticular") == 5
    with pytest.raises(ConfigError, match="zone"):
        s("cz", 10, 0, 0, "none")
    assert "1.5 cm" in P.GUIDELINE_T2W and "ADC" in P.GUIDELINE_DWI_ADC


@pytest.mark.parametrize("score", [1, 2, 3, 4, 5])
def test_lesions_look_like_their_score(score):
    for case_id in range(4):
        c = P.generate_case(case_id, score, seed=1, shape=SMALL)
        les = c["lesion"]
        assert (
            les["pirads"]
            == score
            == P.pirads_score(
                les["zone"],
                les["size_mm"],
                les["adc_drop"],
                les["dwi_gain"],
                les["t2_shape"],
                les["epe"],
            )
        )
        m = c["mask"].astype(bool)
        assert m.sum() == les["voxels"] > 0
        x, y, z = les["point_voxel_xyz"]
        assert m[z, y, x]
        # ADC / DWI are at half the in-plane resolution: compare the lesion's blocks with the zone
        half = m[:, : SMALL[1] // 2 * 2, : SMALL[2] // 2 * 2].reshape(
            SMALL[0], SMALL[1] // 2, 2, SMALL[2] // 2, 2
        )
        core = half.all((2, 4))
        if core.sum() >= 2:
            normal = 1600.0 if les["zone"] == "pz" else 1200.0
            drop = 1 - c["adc"][core].mean() / normal
            assert abs(drop - les["adc_drop"]) < 0.12, (drop, les)
        if score >= 4 and core.sum() >= 2:
            assert c["dwi"][core].mean() > 1.5 * np.median(c["dwi"][c["dwi"] > 10])


def test_deterministic_by_seed():
    a, b = P.generate_case(2, 4, seed=9, shape=SMALL), P.generate_case(2, 4, seed=9, shape=SMALL)
    for k in ("t2w", "adc", "dwi", "mask"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["lesion"] == b["lesion"]
    assert not np.array_equal(a["t2w"], P.generate_case(2, 4, seed=10, shape=SMALL)["t2w"])


def test_picai_layout(picai):
    nib = pytest.importorskip("nibabel")
    with open(picai / "clinical_information" / "marksheet.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
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
    ]
    assert len(rows) == 10
    for i, row in enumerate(rows):
        cid = f"{row['patient_id']}_{row['study_id']}"
        gt = json.loads((picai / "ground_truth" / f"{cid}.json").read_text())
        assert int(row["lesion_PIRADS"]) == gt["pirads"] and int(row["case_ISUP"]) == gt["isup"]
        assert row["case_csPCa"] == ("YES" if gt["isup"] >= 2 else "NO")
        c = P.generate_case(i, gt["pirads"], seed=3, shape=SMALL)
        t2 = sitk.ReadImage(str(picai / row["patient_id"] / f"{cid}_t2w.mha"))
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(t2), np.rint(c["t2w"]).astype(np.int16)
        )
        adc = sitk.ReadImage(str(picai / row["patient_id"] / f"{cid}_adc.mha"))
        hbv = sitk.ReadImage(str(picai / row["patient_id"] / f"{cid}_hbv.mha"))
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(adc), np.rint(c["adc"]).astype(np.int16)
        )
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(hbv), np.rint(c["dwi"]).astype(np.int16)
        )
        # same field of view: ADC's first voxel centre is half a T2W voxel in from T2W's corner...
        # on one grid
        np.testing.assert_allclose(
            np.asarray(adc.GetSpacing()[:2]), 2 * np.asarray(t2.GetSpacing()[:2])
        )
        corner_t2 = np.asarray(t2.GetOrigin()) - 0.5 * np.asarray(t2.GetSpacing())
        corner_adc = np.asarray(adc.GetOrigin()) - 0.5 * np.asarray(adc.GetSpacing())
        np.testing.assert_allclose(corner_t2[:2], corner_adc[:2], atol=1e-6)
        mpath = picai / "csPCa_lesion_delineations" / "human_expert" / "resampled" / f"{cid}.nii.gz"
        mask = sitk.ReadImage(str(mpath))
        np.testing.assert_allclose(mask.GetOrigin(), t2.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(mask.GetDirection(), t2.GetDirection(), atol=1e-6)
        expect = c["mask"] * (gt["isup"] if gt["isup"] >= 2 else 0)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), expect)
        assert np.asarray(nib.load(mpath).dataobj).shape == (SMALL[2], SMALL[1], SMALL[0])


def test_picai_reader(picai):
    from voxlm.datasets import read_records

    recs = read_records("picai", picai, split="train")
    assert len(recs) == 10
    for r in recs:
        gt = json.loads((picai / "ground_truth" / f"{r['id']}.json").read_text())
        assert r["pirads"] == gt["pirads"]
        assert r["sequences"]["dwi"].endswith("_hbv.mha")


def test_mr_dicom(picai):
    pydicom = pytest.importorskip("pydicom")
    files = sorted((picai / "dicom" / "10000_1000000" / "t2w").glob("*.dcm"))
    assert len(files) == SMALL[0]
    ds = pydicom.dcmread(files[3])
    assert ds.Modality == "MR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    t2 = sitk.GetArrayFromImage(sitk.ReadImage(str(picai / "10000" / "10000_1000000_t2w.mha")))
    np.testing.assert_array_equal(ds.pixel_array, t2[3])


def test_prostate_biopsy_layout(tmp_path):
    nib = pytest.importorskip("nibabel")
    root = synth.prostate_mri(tmp_path / "pb", 10, seed=4, layout="prostate-biopsy", shape=SMALL)
    names = []
    for split in ("train", "val", "test"):
        for line in (root / f"{split}.txt").read_text().splitlines():
            name, score = line.split(" ")
            case, target = name.split("-Target")
            assert case.startswith("Prostate-MRI-US-Biopsy-") and target == "1"
            gt = json.loads((root / "ground_truth" / f"{case}.json").read_text())
            assert int(score) == gt["pirads"]
            shapes = {
                nib.load(root / case / f"{case}_{s}_Target1.nii.gz").shape
                for s in ("T2W", "ADC", "DWI")
            }
            assert len(shapes) == 1
            names.append(name)
    assert len(names) == 10
    from voxlm.datasets import read_records

    recs = read_records("prostate-biopsy", root, split="train")
    assert {r["id"] for r in recs} <= set(names) and recs
    assert all(1 <= r["pirads"] <= 5 for r in recs)


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="layout"):
        synth.prostate_mri(tmp_path / "x", 2, layout="prostatex")
    with pytest.raises(ConfigError, match="n"):
        synth.prostate_mri(tmp_path / "x", 0)


def test_voxlm_load_image_reads_the_mha(picai):
    import voxlm

    for s in ("t2w", "adc", "hbv"):
        f = picai / "10001" / f"10001_1000001_{s}.mha"
        v = voxlm.load_image(f)
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))  # [D, H, W]
        np.testing.assert_array_equal(np.asarray(v.data), ref.transpose(2, 1, 0))

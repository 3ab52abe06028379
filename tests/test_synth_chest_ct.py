"""voxlm.synth.chest_ct: determinism, the real CTRG-Chest prevalence, reports that the keyword
labeler inverts exactly, masks where the reports say, HU where anatomy says, and files read back
by nibabel, SimpleITK, pydicom and voxlm's ctrg-chest / ct-rate readers."""

import importlib
import json
import threading

import numpy as np
import pytest

from voxlm import synth
from voxlm.exceptions import ConfigError
from voxlm.metrics import CHEXBERT_CONDITIONS
from voxlm.synth import reports as R

C = importlib.import_module(
    "voxlm.synth.chest_ct"
)  # the module (voxlm.synth.chest_ct is also the function)

SMALL = (32, 32, 16)


@pytest.fixture(scope="module")
def ctrg(tmp_path_factory):
    return synth.chest_ct(
        tmp_path_factory.mktemp("ct") / "ctrg", 12, seed=5, shape=SMALL, dicom_every=6
    )


def test_label_names_are_voxlm_metrics():
    assert R.CONDITIONS == CHEXBERT_CONDITIONS
    _, header = C.real_label_table()
    assert [h.replace("_", " ") for h in header] == list(CHEXBERT_CONDITIONS)


def test_prevalence_follows_the_real_table():
    table, _ = C.real_label_table()
    real = (table == 1).mean(0)
    n = 6000
    codes = C.sample_codes(np.random.default_rng(0), n)
    got = (codes == 1).mean(0)
    nf = R.IDX["no finding"]
    for j, name in enumerate(
        CHEXBERT_CONDITIONS[:nf]
    ):  # rows drawn from the table: binomial around the real rate
        sd = np.sqrt(real[j] * (1 - real[j]) / n) + 1e-9
        assert abs(got[j] - real[j]) < 4.5 * sd + 1e-3, (name, got[j], real[j])
    assert (
        got[R.IDX["pneumonia"]] == 0 and got[R.IDX["pneumothorax"]] == 0
    )  # never positive in CTRG-Chest
    positive = (codes[:, :nf] == 1).any(1)
    np.testing.assert_array_equal(codes[:, nf] == 1, ~positive)  # "no finding" consistent
    over = C.sample_codes(np.random.default_rng(0), 4000, prevalence={"cardiomegaly": 0.5})
    assert abs((over[:, R.IDX["cardiomegaly"]] == 1).mean() - 0.5) < 0.04
    with pytest.raises(ConfigError, match="unknown label"):
        C.sample_codes(np.random.default_rng(0), 2, prevalence={"cardiomegally": 0.5})


def _one_hot(label: str) -> np.ndarray:
    codes = np.full(14, 2)
    codes[R.IDX["no finding"]] = 0
    codes[R.IDX[label]] = 1
    return codes


def test_labeler_inverts_the_templates_on_every_label_and_wording():
    rng = np.random.default_rng(3)
    codes = C.sample_codes(rng, 120)
    cases = [(i, codes[i]) for i in range(120)]
    cases += [
        (200 + k, _one_hot(lbl)) for k, lbl in enumerate(CHEXBERT_CONDITIONS[:-1]) for _ in range(3)
    ]
    for i, c in cases:
        for wording in ("varied", "plain"):
            case = C.generate_case(i, c, seed=1, shape=(24, 24, 12), wording=wording)
            np.testing.assert_array_equal(
                R.label_report(case.report), case.labels, err_msg=case.report
            )
    assert R.label_reports([]).shape == (0, 14)


def test_labeler_on_real_style_negations():
    neg = (
        "Thorax is symmetrical, no obvious consolidation shadow. Bilateral pulmonary hili are not "
        "large. No obvious mass or enlarged lymph node is found in mediastinum. No pleural "
        "effusion or pleural thickening."
    )
    assert R.label_report(neg).tolist() == [0] * 13 + [1]
    pos = (
        "No pleural effusion, right pleural thickening. A solid nodule is seen in the right upper "
        "lobe."
    )
    got = R.label_report(pos)
    assert (
        got[R.IDX["pleural other"]] == 1
        and got[R.IDX["lung lesion"]] == 1
        and got[R.IDX["pleural effusion"]] == 0
    )


def test_generation_is_deterministic_by_seed():
    codes = _one_hot("pleural effusion")
    a, b = (
        C.generate_case(3, codes, seed=7, shape=SMALL),
        C.generate_case(3, codes, seed=7, shape=SMALL),
    )
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.report == b.report and a.findings == b.findings
    c = C.generate_case(3, codes, seed=8, shape=SMALL)
    assert not np.array_equal(a.hu, c.hu)


@pytest.mark.parametrize("label", [c for c in CHEXBERT_CONDITIONS if c != "no finding"])
def test_each_finding_is_planted_where_the_truth_and_report_say(label):
    case = C.generate_case(11, _one_hot(label), seed=2, shape=(64, 64, 32))
    assert [f["label"] for f in case.findings] == [label]
    f = case.findings[0]
    v = R.IDX[label] + 1
    assert (case.mask == v).sum() == f["voxels"] > 0
    assert set(np.unique(case.mask)) <= {0, v}
    x, y, z = f["center_voxel"]
    near = case.mask[max(x - 2, 0) : x + 3, max(y - 2, 0) : y + 3, max(z - 2, 0) : z + 3]
    assert (near == v).any(), "the recorded centre lies in (or next to) the planted finding"
    assert R.label_report(case.report)[R.IDX[label]] == 1
    if "lobe" in f and label in (
        "lung lesion",
        "lung opacity",
        "consolidation",
        "atelectasis",
        "pneumonia",
    ):
        side, lobe = f["side"], f["lobe"]
        assert any(p[4:] in case.report.lower() for p in R.LOBE_NAMES[(side, lobe)]), case.report
        # the voxel's side: i increases towards the patient's right (RAS)
        assert (x >= 32) == (side == "right")
    hu = case.hu[case.mask == v].astype(float)
    expected = {
        "pleural effusion": (0, 40),
        "cardiomegaly": (20, 70),
        "enlarged cardiomediastinum": (15, 65),
        "consolidation": (-400, 60),
        "lung opacity": (-650, -400),
        "support devices": (1000, 3100),
        "pneumothorax": (-1024, -960),
        "atelectasis": (15, 65),
        "pleural other": (20, 70),
    }
    if label in expected:
        lo, hi = expected[label]
        assert lo <= np.median(hu) <= hi, (label, np.median(hu))


def test_normal_anatomy_hu():
    case = C.generate_case(0, np.array([0] * 13 + [1]), seed=0, shape=(64, 64, 32))
    hu = case.hu
    assert case.findings == [] and not case.mask.any()
    assert hu[0, 0, 0] < -950  # air outside the body
    assert -900 < np.median(hu[44, 32, 16:24]) < -800  # right lung
    assert np.median(hu[32, 30, 16]) < 100  # mediastinum
    assert hu.max() >= 600  # bone


def test_ctrg_layout_reads_back(ctrg):
    nib = pytest.importorskip("nibabel")
    from voxlm.datasets import read_records

    ann = json.loads((ctrg / "annotation.json").read_text())
    assert sorted(ann) == ["test", "train", "val"] and all(ann[k] for k in ann)
    assert sum(len(v) for v in ann.values()) == 12
    header = (ctrg / "CTRG_finding_labels.csv").read_text().splitlines()[0]
    assert header.split(",")[0] == "id" and len(header.split(",")) == 15
    seen = 0
    for split in ("train", "validation", "test"):
        for r in read_records("ctrg-chest", ctrg, split=split):
            gt = C.read_truth(ctrg, r["id"])
            np.testing.assert_array_equal(r["labels"], gt["labels"])
            np.testing.assert_array_equal(r["label_codes"], gt["codes"])
            assert r["report"] == gt["report"]
            case = C.generate_case(int(r["id"]), np.asarray(gt["codes"]), seed=5, shape=SMALL)
            img = nib.load(r["image"])
            np.testing.assert_array_equal(np.asarray(img.dataobj), case.hu)
            np.testing.assert_allclose(img.affine, case.affine, atol=1e-5)
            m = nib.load(ctrg / "ground_truth" / f"{r['id']}_mask.nii.gz")
            np.testing.assert_array_equal(np.asarray(m.dataobj), case.mask)
            seen += 1
    assert seen == 12


def test_dicom_copy_matches_the_nifti(ctrg):
    sitk = pytest.importorskip("SimpleITK")
    pydicom = pytest.importorskip("pydicom")
    series = ctrg / "dicom" / "0"
    files = sorted(series.glob("*.dcm"))
    assert len(files) == SMALL[2]
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "CT" and float(ds.RescaleIntercept) == -1024
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(series)))
    dcm = r.Execute()
    nii = sitk.ReadImage(str(ctrg / "CTRG-Chest-548K_volume" / "0.nii.gz"))
    # the series is stored in LPS row/column order (identity direction), the NIfTI in RAS voxel
    # order: the same voxels at the same physical points
    np.testing.assert_allclose(dcm.GetSpacing(), nii.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(dcm.GetDirection(), np.eye(3).ravel(), atol=1e-6)
    on_nii_grid = sitk.Resample(dcm, nii, sitk.Transform(), sitk.sitkNearestNeighbor, -2000.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_nii_grid), sitk.GetArrayFromImage(nii))
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(dcm)[:, ::-1, ::-1], sitk.GetArrayFromImage(nii)
    )


def test_ct_rate_layout_reads_back(tmp_path, ctrg):
    nib = pytest.importorskip("nibabel")
    from voxlm.datasets import read_records

    root = synth.chest_ct(tmp_path / "ctrate", 12, seed=5, layout="ct-rate", shape=SMALL)
    recs = read_records("ct-rate", root, split="train") + read_records(
        "ct-rate", root, split="validation"
    )
    assert len(recs) == 12 and {r["split"] for r in recs} == {"train", "validation"}
    for r in recs:
        raw = np.asarray(nib.load(r["image"]).dataobj).astype(np.float64)
        hu = r["meta"]["rescale_slope"] * raw + r["meta"]["rescale_intercept"]
        gt = None
        for f in (root / "ground_truth").glob("*.json"):
            g = json.loads(f.read_text())
            if g.get("volume_name") == r["id"] + ".nii.gz":
                gt = g
        assert gt is not None
        case = C.generate_case(int(gt["id"]), np.asarray(gt["codes"]), seed=5, shape=SMALL)
        np.testing.assert_array_equal(hu, case.hu)  # CT-CLIP's HU = slope * x + intercept
        np.testing.assert_allclose(r["meta"]["spacing"], case.spacing, rtol=1e-6)
        np.testing.assert_array_equal(r["labels"], C.ct_rate_labels(np.asarray(gt["labels"])))
        assert r["report"] == gt["report"] and r["sections"]["impression"]
    assert C.ct_rate_labels(np.eye(14, dtype=np.int64)).sum() == 13  # the entries of CT_RATE_MAP


def test_ensure_reuses_refuses_and_survives_a_race(tmp_path):
    root = tmp_path / "d"
    errors = []

    def go():
        try:
            synth.ensure(root, "chest-ct", 4, seed=1, shape=(16, 16, 8))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(list((root / "CTRG-Chest-548K_volume").glob("*.nii.gz"))) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".d.tmp")]
    mtime = (root / "annotation.json").stat().st_mtime_ns
    assert synth.ensure(root, "chest-ct", 4, seed=1) == root
    assert (root / "annotation.json").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="different synthetic dataset"):
        synth.ensure(root, "chest-ct", 5, seed=1)
    with pytest.raises(ConfigError, match="different synthetic dataset"):
        synth.ensure(root, "chest-ct", 4, seed=1, shape=(8, 8, 8))
    assert synth.ensure(root, "chest-ct", 4, seed=1, shape=(16, 16, 8)) == root
    with pytest.raises(ConfigError, match="expected one of"):
        synth.ensure(tmp_path / "e", "knee-mri", 2)
    assert synth.main(["chest-ct", "--out", str(tmp_path / "cli"), "--n", "2"]) == 0
    assert (tmp_path / "cli" / "annotation.json").is_file()


def test_voxlm_load_image_reads_the_dicom_copy(ctrg):
    import voxlm

    dcm = voxlm.load_image(ctrg / "dicom" / "0")
    nii = voxlm.load_image(ctrg / "CTRG-Chest-548K_volume" / "0.nii.gz")
    assert dcm.axcodes == ("L", "P", "S") and nii.axcodes == ("R", "A", "S")
    np.testing.assert_array_equal(np.asarray(dcm.data)[::-1, ::-1, :], np.asarray(nii.data))
    corner = np.asarray(dcm.affine) @ np.array([0, 0, 0, 1.0])
    same = np.asarray(nii.affine) @ np.array([SMALL[0] - 1, SMALL[1] - 1, 0, 1.0])
    np.testing.assert_allclose(corner, same, atol=1e-3)

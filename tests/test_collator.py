"""ReportCollator against hand-built expected batches (token pieces encoded by the reference
`tokenizers` library on the bundled tokenizer.json), and ReportDataset in a DataLoader."""

from __future__ import annotations

import pathlib

import nibabel as nib
import numpy as np
import pytest
import tokenizers
import torch

import voxlm.datasets as D
from voxlm.datasets import ReportCollator, ReportDataset
from voxlm.datasets.ctrg_chest import diagnostic_prompt
from voxlm.exceptions import ConfigError, DataError, ShapeError
from voxlm.llm import Tokenizer

TOK = pathlib.Path(D.__file__).parent / "ctrg_bpe_tokenizer.json"
PROMPT = "Please write the report of this chest CT. "


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(TOK, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def ref():
    return tokenizers.Tokenizer.from_file(str(TOK))


def _items(n=2, shape=(1, 4, 4, 2)):
    res = D.dia_llama_results()
    # short and long real reports, so padding is exercised
    texts = [res.references[0][:60], res.references[1][:140], res.references[2][:20]][:n]
    g = torch.Generator().manual_seed(0)
    return [
        {
            "id": str(i),
            "image": torch.randn(shape, generator=g),
            "report": t,
            "labels": torch.tensor(res.labels[i]),
        }
        for i, t in enumerate(texts)
    ]


def _enc(ref, text):
    return ref.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("side", ["right", "left"])
def test_train_batch_equals_hand_built(tok, ref, side):
    items = _items()
    n_img = 5
    col = ReportCollator(
        tok, num_image_tokens=n_img, max_length=512, prompt=PROMPT, padding_side=side
    )
    b = col(items)
    bos, eos, pad, im = (ref.token_to_id(t) for t in ("<s>", "</s>", "<pad>", "<im_patch>"))
    p = [bos] + [im] * n_img + _enc(ref, PROMPT)
    seqs = [p + _enc(ref, it["report"]) + [eos] for it in items]
    T = max(map(len, seqs))
    exp_ids = torch.full((2, T), pad)
    exp_mask = torch.zeros((2, T), dtype=torch.long)
    exp_lab = torch.full((2, T), -100)
    for i, s in enumerate(seqs):
        o = 0 if side == "right" else T - len(s)
        exp_ids[i, o : o + len(s)] = torch.tensor(s)
        exp_mask[i, o : o + len(s)] = 1
        exp_lab[i, o + len(p) : o + len(s)] = torch.tensor(s[len(p) :])
    assert torch.equal(b["input_ids"], exp_ids)
    assert torch.equal(b["attention_mask"], exp_mask)
    assert torch.equal(b["labels"], exp_lab)
    assert b["input_ids"].dtype == b["labels"].dtype == torch.int64
    assert torch.equal(b["images"], torch.stack([it["image"] for it in items]))
    assert torch.equal(b["cls_labels"], torch.stack([it["labels"] for it in items]))
    assert b["ids"] == ["0", "1"]
    # exactly num_image_tokens placeholders per row, right after BOS
    assert ((b["input_ids"] == im).sum(1) == n_img).all()
    # the target decodes back to the report
    i = 1
    tgt = b["labels"][i][b["labels"][i] != -100]
    assert tgt[-1] == eos
    assert ref.decode(tgt[:-1].tolist()).replace(" ", "") == items[i]["report"].replace(" ", "")


def test_generation_batch_equals_hand_built(tok, ref):
    items = _items(3)
    col = ReportCollator(
        tok, 4, 512, prompt=lambda r: diagnostic_prompt(r["labels"].numpy()), mode="generate"
    )
    b = col(items)
    bos, pad, im = (ref.token_to_id(t) for t in ("<s>", "<pad>", "<im_patch>"))
    seqs = [[bos] + [im] * 4 + _enc(ref, diagnostic_prompt(it["labels"].numpy())) for it in items]
    T = max(map(len, seqs))
    exp = torch.full((3, T), pad)
    mask = torch.zeros((3, T), dtype=torch.long)
    for i, s in enumerate(seqs):
        exp[i, T - len(s) :] = torch.tensor(s)
        mask[i, T - len(s) :] = 1
    assert torch.equal(b["input_ids"], exp) and torch.equal(b["attention_mask"], mask)
    assert "labels" not in b and b["references"] == [it["report"] for it in items]


def test_template_sections_truncation_and_errors(tok, ref):
    items = [
        {"id": "a", "sections": {"findings": "Both lungs are clear.", "impression": "Normal."}}
    ]
    col = ReportCollator(
        tok, 0, 512, prompt="Write the findings.", target_key="sections.findings", template="alpaca"
    )
    from voxlm.llm import format_prompt

    b = col(items)
    s = (
        [ref.token_to_id("<s>")]
        + _enc(ref, format_prompt("alpaca", "Write the findings."))
        + _enc(ref, "Both lungs are clear.")
        + [ref.token_to_id("</s>")]
    )
    assert b["input_ids"][0].tolist() == s and "images" not in b
    # truncation: target cut, EOS kept
    plen = len(col.encode(items[0])[0]) - len(_enc(ref, "Both lungs are clear.")) - 1
    short = ReportCollator(
        tok,
        0,
        plen + 3,
        prompt="Write the findings.",
        target_key="sections.findings",
        template="alpaca",
    )
    ids = short(items)["input_ids"][0].tolist()
    assert len(ids) == plen + 3 and ids[-1] == ref.token_to_id("</s>")
    assert ids[plen : plen + 2] == _enc(ref, "Both lungs are clear.")[:2]
    with pytest.raises(ConfigError, match="max_length 10 is too short"):
        ReportCollator(tok, 32, 10)(_items(1))
    with pytest.raises(ConfigError, match="not a token"):
        ReportCollator(tok, 4, 64, image_token="<img>")
    with pytest.raises(ConfigError, match="padding_side"):
        ReportCollator(tok, 4, 64, padding_side="middle")
    mixed = _items(2)
    mixed[1]["image"] = torch.zeros(1, 4, 4, 3)
    with pytest.raises(ShapeError, match=r"1: \(1, 4, 4, 3\)"):
        ReportCollator(tok, 4, 512)(mixed)
    # MRI sequences: an item lacking one of the batch's sequences is named (not a raw KeyError)
    seqs = _items(2)
    seqs[0]["sequences"] = {"t2w": torch.zeros(1, 4, 4, 2), "adc": torch.zeros(1, 4, 4, 2)}
    seqs[1]["sequences"] = {"t2w": torch.zeros(1, 4, 4, 2)}
    with pytest.raises(DataError, match=r"'adc' missing in \['1'\]"):
        ReportCollator(tok, 4, 512)(seqs)
    seqs[0]["sequences"] = {"t2w": torch.zeros(1, 4, 4, 2)}
    seqs[1]["sequences"] = {"t2w": torch.zeros(1, 4, 4, 2), "adc": torch.zeros(1, 4, 4, 2)}
    with pytest.raises(DataError, match=r"'adc' missing in \['0'\]"):
        ReportCollator(tok, 4, 512)(seqs)
    # label vectors of different lengths: a ShapeError naming the ids and shapes
    labs = _items(2)
    labs[1]["labels"] = np.zeros(3, dtype=np.int64)
    with pytest.raises(ShapeError, match=r"labels of different shapes.*1: \(3,\)"):
        ReportCollator(tok, 4, 512)(labs)


def test_report_dataset_in_dataloader_workers(tmp_path, tok):
    res = D.dia_llama_results()
    recs = []
    for i in range(4):
        p = tmp_path / f"{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.full((4, 4, 2), float(i), np.float32), np.eye(4)), p)
        recs.append(
            {
                "id": str(i),
                "image": str(p),
                "report": res.references[i][:80],
                "labels": res.labels[i],
            }
        )
    ds = ReportDataset(recs, transform=lambda v: v.data[None] * 2.0)
    col = ReportCollator(tok, 3, 128, prompt=PROMPT)
    dl = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=col, num_workers=2)
    batches = list(dl)
    assert [b["ids"] for b in batches] == [["0", "1"], ["2", "3"]]
    imgs = torch.cat([b["images"] for b in batches])
    assert imgs.shape == (4, 1, 4, 4, 2)
    assert torch.equal(imgs[:, 0, 0, 0, 0], torch.tensor([0.0, 2.0, 4.0, 6.0]))
    assert torch.equal(
        torch.cat([b["cls_labels"] for b in batches]), torch.as_tensor(res.labels[:4])
    )


def test_report_dataset_fused_path_equals_step_by_step(tmp_path):
    """With the default loader, a chain that fuses runs in one Rust pass (load_batch's path);
    an explicit loader runs the same transforms one by one: equal to float32 resampling noise."""
    import nibabel as nib

    import voxlm
    from voxlm import transforms as T
    from voxlm.data import rust_plan
    from voxlm.datasets import ReportDataset

    rng = np.random.default_rng(0)
    path = tmp_path / "ct.nii.gz"
    nib.save(
        nib.Nifti1Image(
            rng.integers(-1000, 1000, (20, 18, 12)).astype(np.int16), np.diag([-0.8, 0.8, 2.0, 1.0])
        ),
        path,
    )
    pipe = T.Compose(
        [
            T.Orientation("RAS"),
            T.ScaleIntensityRange(-160, 240, 0, 1, clip=True),
            T.Resize((8, 16, 16)),
        ]
    )
    assert rust_plan(pipe) is not None
    rec = [{"id": "0", "image": str(path)}]
    fused = ReportDataset(rec, transform=pipe)[0]["image"]
    stepwise = ReportDataset(rec, transform=pipe, image_loader=voxlm.load_image)[0]["image"]
    assert fused.shape == stepwise.shape == (1, 8, 16, 16)
    torch.testing.assert_close(fused, stepwise, rtol=1e-5, atol=1e-5)


def test_none_or_nan_target_is_refused_not_trained_as_text(tok):
    """An empty table cell read as None (JSON null) or NaN (pandas) is a DataError naming the
    record, not the target text "None" / "nan"; generation keeps it as a missing reference."""
    col = ReportCollator(tok, 0, 64, prompt=PROMPT)
    for v in (None, float("nan")):
        with pytest.raises(DataError, match=r"record 'r1' has 'report' = (None|nan)"):
            col([{"id": "r1", "report": v}])
    gen = ReportCollator(tok, 0, 64, prompt=PROMPT, mode="generate")
    assert gen([{"id": "r1", "report": None}])["references"] == [None]
    assert col([{"id": "r2", "report": ""}])["labels"][0].tolist()[-1] == tok.eos_token_id


@pytest.mark.parametrize("bad", [5, None, 2.5])
def test_report_dataset_refuses_non_sequences(bad):
    with pytest.raises(DataError, match="ReportDataset: records must be a list of record dicts"):
        ReportDataset(bad)

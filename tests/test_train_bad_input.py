"""Bad input at the trainer's and the CLI's entry points: a corrupt checkpoint on resume, an
output folder that cannot be made, broken YAML / config.json — each one named voxlm error (one
line from the CLI, exit 1 or 2), and no complete checkpoint is changed or removed."""

import hashlib
import json

import pytest
import torch
import yaml

from voxlm.cli import _one_line, main
from voxlm.exceptions import CheckpointError, ConfigError, VolumeFormatError
from voxlm.train import Trainer, list_checkpoints

from .test_train_cli import TINY
from .test_train_trainer import Lin, Reg, _args


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


CORRUPTIONS = [
    ("optimizer.pt", b"garbage", "optimizer.pt: not a loadable optimizer state"),
    ("scheduler.pt", b"", "scheduler.pt: not a loadable scheduler state"),
    ("trainer_state.json", b"[1, 2]", "expected a JSON object with 'args'"),
    ("trainer_state.json", b"\xff\xfe{", "trainer_state.json: unreadable"),
]


def test_resume_from_corrupt_checkpoint_is_named_and_keeps_the_others(tmp_path):
    """An explicit corrupt checkpoint path is a named error and nothing on disk changes; so is
    resume_from_checkpoint=True when every checkpoint is corrupt."""
    a = _args(tmp_path, max_steps=4, save_steps=2)
    Trainer(Lin(), a, Reg()).train()
    run = tmp_path / "run"
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]
    for name, content, fragment in CORRUPTIONS:
        good = (run / "checkpoint-4" / name).read_bytes()
        (run / "checkpoint-4" / name).write_bytes(content)
        before = _digest(run)
        with pytest.raises(CheckpointError) as e:
            Trainer(Lin(), a, Reg()).train(resume_from_checkpoint=run / "checkpoint-4")
        msg = str(e.value)
        assert fragment in msg and "checkpoint-4" in msg and "\n" not in msg, msg
        assert _digest(run) == before  # nothing written, nothing rotated away
        (run / "checkpoint-4" / name).write_bytes(good)
    # every checkpoint corrupt: resume=True names them all and changes nothing
    for step in (2, 4):
        (run / f"checkpoint-{step}" / "optimizer.pt").write_bytes(b"garbage")
    before = _digest(run)
    with pytest.raises(CheckpointError, match="no checkpoint .* could be loaded") as e:
        Trainer(Lin(), a, Reg()).train(resume_from_checkpoint=True)
    assert "checkpoint-2" in str(e.value) and "checkpoint-4" in str(e.value)
    assert _digest(run) == before


@pytest.mark.parametrize(("name", "content", "fragment"), CORRUPTIONS)
def test_resume_true_falls_back_to_the_newest_loadable_checkpoint(
    tmp_path, name, content, fragment
):
    """resume_from_checkpoint=True with a corrupt newest checkpoint: a warning naming the failure,
    training continues from the previous complete checkpoint to the same end state as an
    uninterrupted run, and the corrupt folder is kept byte for byte as corrupt-checkpoint-N."""
    a = _args(tmp_path, max_steps=4, save_steps=2)
    ref = Trainer(Lin(), a.replace(output_dir=str(tmp_path / "ref")), Reg())
    ref.train()
    Trainer(Lin(), a, Reg()).train()
    run = tmp_path / "run"
    (run / "checkpoint-4" / name).write_bytes(content)
    bad = _digest(run / "checkpoint-4")
    model = Lin()
    with pytest.warns(UserWarning, match="resuming from checkpoint-2") as w:
        out = Trainer(model, a, Reg()).train(resume_from_checkpoint=True)
    assert any(fragment in str(x.message) for x in w), [str(x.message) for x in w]
    assert out.global_step == 4
    assert _digest(run / "corrupt-checkpoint-4") == bad  # kept, not a checkpoint any more
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]  # checkpoint-4 written anew
    for p, q in zip(model.parameters(), ref.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    def run(argv, code):
        assert main(argv) == code
        err = capsys.readouterr().err
        assert err.startswith("voxlm ") and err.count("\n") == 1 and "Traceback" not in err, err
        return err

    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: [1\n")  # YAML's own message spans several lines
    assert "not valid YAML" in run(["train", str(bad)], 1)
    bad.write_bytes(b"\xff\xfe\x00")
    assert "not a text (UTF-8) file" in run(["train", str(bad)], 1)
    # an output folder below a regular file cannot be made: one line, exit 1
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    cfg = {**TINY, "train": {**TINY["train"], "output_dir": str(blocker / "run")}}
    bad.write_text(yaml.safe_dump(cfg))
    err = run(["train", str(bad)], 1)
    assert str(blocker) in err
    # a saved model whose config.json is JSON but not an object
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("[1]")
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"data": TINY["data"]}))
    err = run(["generate", str(tmp_path / "m"), "--data", str(data)], 1)
    assert "expected a JSON object with 'recipe'" in err
    # a field of the wrong kind that the recipe's loader trips over (AttributeError): exit 2
    (tmp_path / "m" / "config.json").write_text(json.dumps({"recipe": "example", "llm": 5}))
    err = run(["generate", str(tmp_path / "m"), "--data", str(data)], 2)
    assert "config.json': AttributeError" in err
    (tmp_path / "m" / "config.json").write_text(json.dumps({"recipe": "example"}))
    bad.write_text("data: {format: [\n")
    assert "--data" in run(["generate", str(tmp_path / "m"), "--data", str(bad)], 1)
    # --debug shows the traceback instead of the line
    with pytest.raises(ConfigError, match="not a run folder"):
        main(["--debug", "generate", str(tmp_path / "nothing")])


class _CorruptFile(Reg):
    def __getitem__(self, i):
        if i == 5:
            raise VolumeFormatError("/data/5.nii.gz: corrupt or truncated gzip data")
        return super().__getitem__(i)


def test_worker_error_prints_as_its_own_line(tmp_path):
    """A corrupt file met in a DataLoader worker: torch re-raises the voxlm error with the worker's
    traceback in its message; the CLI's line is the original message, naming the worker."""
    a = _args(tmp_path, dataloader_num_workers=1)
    with pytest.raises(VolumeFormatError) as e:
        Trainer(Lin(), a, _CorruptFile()).train()
    assert "Original Traceback" in str(e.value)
    assert _one_line(e.value) == (
        "/data/5.nii.gz: corrupt or truncated gzip data (DataLoader worker process 0)"
    )


@pytest.mark.parametrize("steps", ["-1", "0", "ten"])
def test_demo_steps_must_be_positive(steps, capsys):
    with pytest.raises(SystemExit) as e:  # argparse's usage error, before any work starts
        main(["demo", "--steps", steps, "--out", "/nonexistent-never-made"])
    assert e.value.code == 2
    assert "expected an integer >= 1" in capsys.readouterr().err

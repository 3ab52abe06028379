"""``voxlm train | evaluate | generate | synth | info`` on the built-in example recipe (``--split
test`` through a recipe's ``dataset(data, split)``: tests/test_recipe_picg.py,
test_recipe_llava_rrg.py)."""

import csv
import json
import subprocess
import sys

import pytest
import yaml

from voxlm.cli import main

TINY = {
    "recipe": {
        "name": "example",
        "modulus": 8,
        "seq_len": 8,
        "prompt_len": 3,
        "lora_steps_fraction": 0.5,
    },
    "model": {
        "llm": {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        }
    },
    "data": {"format": "arithmetic", "n_train": 32, "n_eval": 8},
    "train": {
        "max_steps": 4,
        "per_device_train_batch_size": 8,
        "save_steps": 2,
        "logging_steps": 1,
        "eval_strategy": "steps",
        "eval_steps": 2,
        "disable_tqdm": True,
    },
}


@pytest.fixture()
def config(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def test_train_evaluate_generate(tmp_path, config, capsys):
    run = tmp_path / "run"
    r = subprocess.run(
        # --resume on a folder that holds no run yet: starts from step 0 and says so
        [sys.executable, "-m", "voxlm", "train", str(config), "--output-dir", str(run), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "holds no run yet; starting from step 0" in r.stderr
    summary = json.loads(r.stdout[r.stdout.index("{") :])
    assert (
        summary["stages"]["lm"]["global_step"] == 4
        and summary["stages"]["lora"]["global_step"] == 2
    )
    for p in (
        "config.yaml",
        "lm/metrics.csv",
        "lm/loss.png",
        "lm/final/model.safetensors",
        "lm/checkpoint-4",
        "lora/checkpoint-2/adapters/llm/adapter_config.json",
        "lora/final/adapters/llm/adapter_model.safetensors",
        "model/config.json",
        "model/model.safetensors",
        "model/adapter/adapter_config.json",
    ):
        assert (run / p).exists(), p
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["output_dir"] == str(run)

    assert main(["evaluate", str(run)]) == 0
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert set(ev) == {"exact_match", "token_accuracy", "n"} and ev["n"] == 8
    rows = list(csv.DictReader((run / "eval" / "predictions.csv").open()))
    assert len(rows) == 8 and all(len(r["target"].split()) == 5 for r in rows)

    assert (
        main(
            ["generate", str(run / "model"), "--data", str(config), "--out", str(tmp_path / "gen")]
        )
        == 0
    )
    gen = list(csv.DictReader((tmp_path / "gen" / "predictions.csv").open()))
    assert [g["prediction"] for g in gen] == [r["prediction"] for r in rows]  # same model, greedy
    # --split test needs a per-split builder, which the generated example task does not have
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "test"]) == 1
    assert "has no per-split dataset(data, split) builder" in capsys.readouterr().err

    # the folder holds a run: refused without --resume; with --resume the finished stages are kept
    capsys.readouterr()
    assert main(["train", str(config), "--output-dir", str(run)]) == 1
    assert "holds another run" in capsys.readouterr().err
    before = (run / "lora" / "final" / "model.safetensors").read_bytes()
    assert main(["train", str(config), "--output-dir", str(run), "--resume"]) == 0
    assert (run / "lora" / "final" / "model.safetensors").read_bytes() == before


def test_example_eval_rules_are_not_trained_on():
    from voxlm.recipes import get_recipe

    r = get_recipe("example").from_config(TINY["recipe"], TINY["model"])
    train, ev = r.datasets({**TINY["data"], "n_train": 512})
    seen = {tuple(p) for p in train.pairs.tolist()}
    held = [tuple(p) for p in ev.pairs.tolist()]
    assert len(ev) == 8 and len(set(held)) == 8 and not seen & set(held)
    assert len(seen) == 8 * 7 - 8  # 512 draws cover the other 48 rules
    train_seqs = {tuple(x) for x in train.ids.tolist()}
    assert not any(tuple(x) in train_seqs for x in ev.ids.tolist())


def test_cli_errors_are_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "trian": {}}))
    assert main(["train", str(bad)]) == 1
    assert "unknown sections ['trian']" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump({**TINY, "train": {"learning_rat": 1}}))
    assert main(["train", str(bad)]) == 1
    assert "learning_rat" in capsys.readouterr().err
    bad.write_text(yaml.safe_dump({**TINY, "recipe": {"name": "nope"}}))
    assert main(["train", str(bad)]) == 1
    assert "unknown recipe 'nope'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 1
    assert "no config.yaml" in capsys.readouterr().err
    # voxlm synth is voxlm.synth.main: its argparse usage error (exit 2) names the kinds
    assert main(["synth", "brain-pet", "--out", str(tmp_path / "s"), "--n", "1"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'brain-pet'" in err and "chest-ct" in err
    # a value of the wrong kind: the recipe's Config fields are checked against their types
    # (recipes.base.check_field_types), one line naming the field, exit 1
    bad.write_text(yaml.safe_dump({**TINY, "recipe": {**TINY["recipe"], "modulus": "8"}}))
    assert main(["train", str(bad), "--output-dir", str(tmp_path / "r2")]) == 1
    err = capsys.readouterr().err
    assert (
        "ConfigError: recipe.modulus: expected an integer, got '8'" in err
        and "Traceback" not in err
        and err.count("\n") == 1
    )


def test_synth_and_info(tmp_path, capsys):
    pytest.importorskip("voxlm.synth")
    assert (
        main(["synth", "chest-ct", "--out", str(tmp_path / "ct"), "--n", "2", "--seed", "1"]) == 0
    )
    assert (tmp_path / "ct" / "annotation.json").is_file()
    assert main(["info"]) == 0
    assert "voxlm" in capsys.readouterr().out

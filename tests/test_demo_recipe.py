"""The main job (``make demo``) end to end, small: NIfTI phantoms -> Rust load_batch -> ViT3D ->
projector -> LLaMA + LoRA training -> generation -> scoring. (The recipe's stage-switch test
moved to tests/test_recipe_vit3d_llama.py.)"""

import json

from voxlm.demo import run


def test_demo_runs_and_learns(tmp_path):
    s = run(steps=45, out=str(tmp_path), meteor=False)
    v = s["vit3d_llama"]
    assert v["volumes"] == [8, 1, 32, 64, 64]
    assert v["loss_end"] < 0.6 * v["loss_start"]
    assert json.loads((tmp_path / "summary.json").read_text())["dia_llama_reports"]["n_reports"] == 362
    assert (tmp_path / "generated_reports.json").is_file()

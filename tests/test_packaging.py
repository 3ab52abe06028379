"""The wheel, installed into a clean venv that holds only torch 2.11.0 and voxlm's declared
runtime dependencies, imports and runs.

Creating a venv and pip-installing torch (4.7 GB with its CUDA libraries) would take minutes, so
the clean venv gets torch another honest way: ``python -m venv`` without system site-packages,
plus one ``.pth`` line naming a folder of symlinks to exactly the distributions in the closure of
the wheel's ``Requires-Dist`` (torch and its own dependencies, numpy, pyyaml, ...), resolved from
the development venv's metadata. Nothing else of the development venv (transformers, pytest, the
repository's ``python/`` folder) is importable there, so an undeclared import fails the test.
The wheel is built by ``maturin build --release`` reusing the repository's target folder, installed
with ``pip install --no-deps --no-index``, and ``pip check`` confirms that its declared
requirements are satisfied by what the folder holds.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _closure(requirements: list[str]) -> dict[str, md.Distribution]:
    """The installed distributions that ``requirements`` pull in (markers evaluated, no extras)."""
    env = {**default_environment(), "extra": ""}
    seen: dict[str, md.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        key = req.name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            pytest.fail(
                f"{req.name} (required by the wheel) is not installed in the development venv"
            )
        assert dist.version in req.specifier or not req.specifier, (
            f"{req} but {dist.version} is installed"
        )
        seen[key] = dist
        for r in dist.requires or []:
            rr = Requirement(r)
            if rr.marker is None or rr.marker.evaluate(env):
                todo.append(rr)
    return seen


def _link_site(dists: dict[str, md.Distribution], site: pathlib.Path) -> None:
    """Symlink every top-level file or folder of each distribution (code and .dist-info)."""
    site.mkdir()
    for dist in dists.values():
        base = pathlib.Path(dist.locate_file(""))
        tops = {pathlib.PurePath(f).parts[0] for f in dist.files or []}
        for top in tops:
            src = base / top
            if (
                top in ("..", "bin")
                or not src.exists()
                or top.endswith(".pth")
                or top == "__pycache__"
            ):
                continue
            dst = site / top
            if not dst.exists():
                dst.symlink_to(src)


def _wheel_requirements(wheel: pathlib.Path) -> list[str]:
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def test_wheel_installs_and_runs_in_a_clean_venv(tmp_path):
    maturin = shutil.which(
        "maturin", path=str(pathlib.Path(sys.executable).parent)
    ) or shutil.which("maturin")
    if maturin is None:
        pytest.skip("maturin is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
    env.update(
        LIBTORCH_USE_PYTORCH="1",
        VIRTUAL_ENV=sys.prefix,
        PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [maturin, "build", "--release", "--out", str(wheels), "--interpreter", sys.executable],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("voxlm-*.whl")
    # auditwheel = "skip": the wheel must not carry a second libtorch
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        assert not [n for n in z.namelist() if "libtorch" in n], "the wheel vendors libtorch"

    reqs = _wheel_requirements(wheel)
    assert any(r.replace(" ", "").startswith("torch==2.11.0") for r in reqs), reqs
    deps = _closure([r for r in reqs if "extra ==" not in r])
    assert "torch" in deps and "voxlm" not in deps
    site = tmp_path / "deps"
    _link_site(deps, site)

    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pathlib.Path(purelib, "_voxlm_test_deps.pth").write_text(str(site) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(py)]
    inst = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert inst.returncode == 0, inst.stderr[-3000:]
    check = subprocess.run([*pip, "check"], capture_output=True, text=True, env=env, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr

    run_env = {k: v for k, v in env.items() if k not in ("VIRTUAL_ENV",)}
    run_env["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    info = subprocess.run(
        [py, "-m", "voxlm", "info"],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert info.returncode == 0, info.stderr[-3000:]
    assert "2.11.0" in info.stdout, info.stdout

    script = r"""
import pathlib, sys
import numpy as np, torch
import voxlm
from voxlm.llm import LlamaConfig, LlamaForCausalLM
from voxlm.vision import ViT3D
here = pathlib.Path(voxlm.__file__).resolve()
assert here.is_relative_to(pathlib.Path(sys.prefix).resolve()), here
for absent in ("transformers", "pytest", "monai"):
    try:
        __import__(absent)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{absent} is importable: the venv is not clean")
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                  num_attention_heads=2, max_position_embeddings=32)
m = LlamaForCausalLM(cfg)
out = m.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, eos_token_id=[])
assert out.shape == (1, 7), out.shape
vit = ViT3D(img_size=(4, 8, 8), patch_size=(2, 4, 4), hidden_size=8, mlp_dim=16, num_layers=1,
            num_heads=2)
tokens, hidden = vit(torch.randn(1, 1, 4, 8, 8))
tokens.sum().backward()
assert vit.norm.weight.grad is not None
p = pathlib.Path(sys.argv[1]) / "v.nii.gz"
voxlm.save_volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), p)
assert np.array_equal(voxlm.load_volume(p).data, np.arange(24, dtype=np.float32).reshape(2, 3, 4))
try:
    voxlm.vision.MLPProjector(4, 8)(torch.tensor(1.0))
except voxlm.exceptions.ShapeError:
    pass
import yaml, tqdm, matplotlib  # declared runtime dependencies
print("ok", out.tolist())
"""
    e2e = subprocess.run(
        [py, "-c", script, str(tmp_path)],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert e2e.returncode == 0, e2e.stdout + e2e.stderr[-3000:]
    assert e2e.stdout.startswith("ok"), e2e.stdout

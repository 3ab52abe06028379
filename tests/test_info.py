import subprocess
import sys

import torch

import voxlm


def test_info_reports_versions():
    d = voxlm.info(as_dict=True)
    assert d["voxlm"] == voxlm.__version__
    assert d["torch"].split("+")[0] == d["libtorch_built_for"] == "2.11.0"
    assert d["profile"] in {"release", "debug"}
    assert d["torch_threads"] >= 1 and d["rayon_threads"] >= 1
    assert d["cuda_available"] == torch.cuda.is_available()
    text = voxlm.info()
    assert "libtorch_built_for" in text and "2.11.0" in text


def test_import_in_a_fresh_interpreter_without_torch_first():
    code = "import voxlm, sys; assert 'torch' in sys.modules; print(voxlm.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == voxlm.__version__


def test_python_m_voxlm_info():
    out = subprocess.run(
        [sys.executable, "-m", "voxlm", "info"], capture_output=True, text=True, check=True
    )
    assert "libtorch_built_for" in out.stdout and "torch" in out.stdout

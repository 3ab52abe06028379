"""Memory of loading a checkpoint: the tied embedding is one tensor (as transformers ties it),
every loaded tensor owns exactly its own bytes (no view into a whole-file buffer, no second
copy), the values equal the ``safetensors`` package's reading bit for bit, and loading does not
hold the file's pages and a copy of them at once (peak RSS of a fresh process)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from voxlm.adapters import LoraConfig, add_lora
from voxlm.llm import LlamaConfig, LlamaForCausalLM

safetensors_torch = pytest.importorskip("safetensors.torch")


def _save(path, tie=True, vocab=300, hidden=32, shard=None):
    torch.manual_seed(0)
    m = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=tie,
        )
    )
    m.save_pretrained(path, max_shard_size=shard)
    return m


def _storages(model):
    """{storage data_ptr: (nbytes, [parameter names])} over the model's parameters."""
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        s = p.untyped_storage()
        out.setdefault(s.data_ptr(), [s.nbytes(), []])[1].append(name)
    return out


@pytest.mark.parametrize("shard", [None, 20_000])
def test_tied_embedding_is_stored_once_and_no_buffer_is_shared(tmp_path, shard):
    _save(tmp_path, tie=True, shard=shard)
    m = LlamaForCausalLM.from_pretrained(tmp_path)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    add_lora(m, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    st = _storages(m)
    # the only storage two parameters share is the tied embedding's
    shared = [names for _, names in st.values() if len(names) > 1]
    assert shared == [["model.embed_tokens.weight", "lm_head.weight"]]
    # every storage holds exactly its tensor: not a slice of a larger (whole-file) buffer
    by_name = dict(m.named_parameters(remove_duplicate=False))
    for nbytes, names in st.values():
        p = by_name[names[0]]
        assert nbytes == p.numel() * p.element_size(), names
    # the base weights hold the checkpoint's bytes once: their sum is the files' tensor bytes
    files = sorted(pathlib.Path(tmp_path).glob("*.safetensors"))
    ref = {}
    for f in files:
        ref.update(safetensors_torch.load_file(f))
    base = {k: v for k, v in by_name.items() if ".lora_" not in k}
    base_ptrs = {v.untyped_storage().data_ptr() for v in base.values()}
    assert sum(st[p][0] for p in base_ptrs) == sum(v.numel() * 4 for v in ref.values())
    # and equal them bit for bit (read through voxlm's pread path, every offset)
    sd = {k.replace(".base_layer.", "."): v for k, v in m.state_dict().items()}
    assert set(ref) == {k for k in sd if ".lora_" not in k and "rotary" not in k} - {
        "lm_head.weight"
    }
    for k, v in ref.items():
        assert torch.equal(sd[k], v), k


def test_untied_head_is_its_own_tensor(tmp_path):
    _save(tmp_path, tie=False)
    m = LlamaForCausalLM.from_pretrained(tmp_path)
    assert m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr()
    ref = safetensors_torch.load_file(tmp_path / "model.safetensors")
    assert torch.equal(m.lm_head.weight, ref["lm_head.weight"])


def test_dtype_conversion_on_load_equals_torch_cast(tmp_path):
    _save(tmp_path, tie=True)
    m = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    ref = safetensors_torch.load_file(tmp_path / "model.safetensors")
    for k, v in ref.items():
        got = dict(m.named_parameters())[k]
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, v.to(torch.bfloat16)), k


CHILD = r"""
import json, sys
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
import torch
from voxlm.llm import LlamaForCausalLM
LlamaForCausalLM.from_pretrained(sys.argv[2])  # a tiny checkpoint first: every lazy import done
before = hwm()
m = LlamaForCausalLM.from_pretrained(sys.argv[1])
after = hwm()
nbytes = sum(p.numel() * p.element_size() for p in m.parameters())
print(json.dumps({"growth": after - before, "weights": nbytes}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_loading_peak_is_the_weights_not_file_plus_copy(tmp_path):
    # ~67 MB of float32 weights (mostly the 32000 x 512 tied embedding)
    _save(tmp_path / "big", tie=True, vocab=32000, hidden=512)
    _save(tmp_path / "tiny", tie=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(pathlib.Path(__file__).parents[1] / "python"), env.get("PYTHONPATH", "")]
    )
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "big"), str(tmp_path / "tiny")],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # Reading through a memory map and copying (the previous loader) peaked at ~2x the weights
    # (the mapped pages count in RSS next to the copy); reading each tensor into its own buffer
    # peaks at the weights alone. 1.4x leaves room for allocator and interpreter noise.
    assert r["growth"] <= 1.4 * r["weights"], r

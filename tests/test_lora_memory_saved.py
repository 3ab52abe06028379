"""What the training forward saves for the backward: LoRA dropout keeps a bool mask (1 byte per
element) and the dropped-out input, not libtorch's float noise tensor as well; and voxlm's
training forward fixes glibc's malloc thresholds once, unless VOXLM_MALLOC_TRIM=0."""

import os
import subprocess
import sys

import torch

from voxlm.adapters import LoraConfig, add_lora
from voxlm.llm import LlamaConfig, LlamaForCausalLM

B, T, H, MLP = 2, 9, 32, 64


def _saved(dropout):
    """(bytes of saved bool tensors, bytes of saved float tensors), each storage counted once."""
    torch.manual_seed(0)
    m = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=100,
            hidden_size=H,
            intermediate_size=MLP,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    add_lora(m, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=dropout))
    m.train()
    seen: dict[tuple[int, int], tuple[torch.dtype, int]] = {}

    def pack(t):
        if t.numel():
            seen[(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())] = (
                t.dtype,
                t.untyped_storage().nbytes(),
            )
        return t

    ids = torch.randint(0, 100, (B, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(input_ids=ids, labels=ids, loss_chunk_size=8).loss.backward()
    bools = sum(n for d, n in seen.values() if d == torch.bool)
    floats = sum(n for d, n in seen.values() if d.is_floating_point)
    return bools, floats


def test_lora_dropout_saves_a_bool_mask_not_float_noise():
    # the inputs of the 7 LoRA linears of a layer: q, k, v, o, gate, up (H wide) and down (I)
    per_layer = B * T * (6 * H + MLP)
    bools0, floats0 = _saved(0.0)
    bools, floats = _saved(0.1)
    # (without dropout the only bool saved is the loss's counted-token index, B * (T - 1))
    assert bools0 == B * (T - 1)
    # one bool mask per LoRA linear, 1 byte per element, except layer 0's q, k, v: their input
    # (the normed frozen embedding) needs no gradient, so no mask is kept for it
    assert bools - bools0 == 2 * per_layer - 3 * B * T * H
    # the dropped-out inputs (float32) at most; libtorch's dropout would add the same again as
    # float noise (8 bytes per element in all)
    extra = floats - floats0
    assert 0 < extra <= 2 * per_layer * 4, (extra, per_layer)


CHILD = r"""
import ctypes, json, sys, torch
import voxlm.allocator as a
from voxlm.llm import LlamaConfig, LlamaForCausalLM
m = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
before = a._applied
m.eval()
m(input_ids=torch.zeros(1, 3, dtype=torch.long))
after_eval = a._applied
m.train()
m(input_ids=torch.zeros(1, 3, dtype=torch.long))
print(json.dumps([before, after_eval, a._applied]))
"""


def _child(env):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("VOXLM_MALLOC", "MALLOC_"))}
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env={**e, **env}, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def test_malloc_settings_applied_on_first_training_forward_unless_opted_out():
    import voxlm.allocator as a

    if a._libc() is None:
        assert a.configure_malloc() is False  # not glibc: nothing changed
        return
    # applied by the first training forward with gradients only, never by eval
    assert _child({}) == "[null, null, true]"
    assert _child({"VOXLM_MALLOC_TRIM": "0"}) == "[null, null, false]"
    # glibc's own environment settings take precedence
    assert _child({"MALLOC_MMAP_THRESHOLD_": "65536"}) == "[null, null, false]"


def test_configure_malloc_rejects_bad_thresholds():
    import pytest

    from voxlm.allocator import configure_malloc
    from voxlm.exceptions import ConfigError

    for bad in (0, -1, 2**31, 1.5, True):
        with pytest.raises(ConfigError, match="threshold"):
            configure_malloc(mmap_threshold=bad)

"""The causal-LM loss straight from the final hidden states, in chunks over tokens, never
materialising the ``[tokens, vocab]`` logits (Liger Kernel's fused linear cross-entropy,
``linkedin/Liger-Kernel`` ``src/liger_kernel/ops/fused_linear_cross_entropy.py``).

At LLaMA-3's 128,256-token vocabulary the logits of a 4 x 2048 batch are 4 GB in float32, and
transformers keeps several such tensors alive (logits, their float32 copy, the softmax in the
backward). Here each chunk of ``chunk_size`` counted tokens computes its logits, the log-sum-exp,
its share of the loss and, at once, the gradients with respect to the hidden states (and the
head weight, when it trains): ``d loss / d logits = (softmax - onehot) / n``. The forward keeps
only ``[tokens, hidden]`` gradients; the backward scales them by the incoming gradient.

Numerics: logits are computed as ``weight @ hidden.T`` in the weight's dtype and then in float32
(as transformers' ``LlamaForCausalLM`` upcasts logits for the loss), so in float32 the loss and
gradients equal the unchunked loss up to summation order (tested to 1e-6 relative).
"""

from __future__ import annotations

from typing import Any

import torch

from .exceptions import ConfigError, ShapeError

#: logits elements per chunk when the chunk size is "auto" (256 MB of float32 logits): 512 tokens
#: at LLaMA-3's vocabulary. With every chunk padded to a multiple of 16 columns (below) the two
#: GEMMs cost 9.39 s per 1000 tokens at 512 tokens per chunk, 9.65 s at 768 and 9.13 s at 1040
#: (2 cores, AVX2, MKL, bench/RESULTS.md "lora"): 3 % more time than 1040-token chunks for
#: 267 MB less peak memory
AUTO_CHUNK_ELEMENTS = 1 << 26


#: vocabularies at least this large get the chunked loss from recipes by default (LLaMA-3's
#: 128,256, Qwen's 151,936; LLaMA-2's 32,000 and the tiny test vocabularies keep full logits)
LARGE_VOCAB = 65536


def recipe_chunk_size(setting: int | str | None, vocab_size: int) -> int | str | None:
    """What a recipe's LLM uses as ``loss_chunk_size`` for the config value ``setting``:
    ``"auto"`` chunks (with :func:`auto_chunk_size` tokens per chunk) when ``vocab_size`` is at
    least :data:`LARGE_VOCAB` and keeps the full logits (None) otherwise; None or ``"none"``:
    full logits; a positive int: that many tokens per chunk. Anything else is a ConfigError."""
    if setting is None or setting == "none":
        return None
    if setting == "auto":
        return "auto" if vocab_size >= LARGE_VOCAB else None
    if isinstance(setting, bool) or not isinstance(setting, int) or setting <= 0:
        raise ConfigError(
            f"loss_chunk_size: expected a positive int, 'auto' or None, got {setting!r}"
        )
    return setting


def auto_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk so that one chunk's float32 logits stay near 256 MB (512 tokens at
    LLaMA-3's 128,256 vocabulary), a multiple of 16 between 16 and 4096."""
    return max(16, min(4096, AUTO_CHUNK_ELEMENTS // max(1, vocab_size)) // 16 * 16)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        target: torch.Tensor,
        chunk_size: int,
        grad_enabled: bool,
    ) -> torch.Tensor:  # type: ignore[override]
        # needs_input_grad stays True under no_grad: the caller passes whether grad is enabled
        n = target.numel()
        need_h = grad_enabled and ctx.needs_input_grad[0]
        weight_grad = grad_enabled and ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if need_h else torch.empty(0)
        acc = torch.promote_types(weight.dtype, torch.float32)  # float32, or float64 for float64
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if weight_grad else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for s in range(0, n, chunk_size):
            h = hidden[s : s + chunk_size]
            y = target[s : s + chunk_size]
            c = y.shape[0]
            # one [V, chunk] buffer per chunk, vocabulary-major: ``weight @ h.T`` lets the GEMM
            # stream the [V, H] weight as its tall, untransposed operand, and the gradient's
            # ``g.T @ weight`` writes [chunk, H] rows in place (at 1040 tokens per chunk on a
            # 2-core AVX2 machine: 4.6 s + 5.3 s, against 5.8 s + 4.7 s token-major, and
            # ``weight.T @ g`` was slower still, bench/RESULTS.md "lora"); the logits become
            # exp(logits - max) and then the gradient in place (torch.logsumexp and
            # torch.softmax would each allocate another)
            g = None  # the previous chunk's buffer goes before the next one is allocated
            pad = -c % 16
            if pad:
                # a product with a column count that is not a multiple of 16 runs ~30 % slower
                # (MKL sgemm, [128256, 2048] x [2048, 1004]: 83 against 112 GFLOP/s at 1024 on a
                # 2-core AVX2 machine): zero rows make it up and their columns are never read
                h = torch.cat([h, h.new_zeros(pad, h.shape[1])])
            g = (weight @ h.t()).to(acc)
            if pad:
                g = g[:, :c]
            picked = g.gather(0, y[None, :]).squeeze(0)
            m = g.amax(dim=0, keepdim=True)
            g.sub_(m).exp_()
            s_exp = g.sum(dim=0, keepdim=True)
            lse = (m + s_exp.log()).squeeze(0)
            total += (lse - picked).sum()
            if not need_h and grad_w is None:
                continue
            # d(mean loss)/d logits = (softmax - onehot) / n, as softmax / n - onehot / n (one
            # pass over the buffer fewer)
            g.div_(s_exp * n)
            g[y, torch.arange(c, device=g.device)] -= 1.0 / n
            if need_h:
                # [chunk, H] = g.T @ weight, written straight into the chunk's rows (out= has no
                # dtype casting and no autocast: otherwise the product is copied in)
                gt, rows = g.to(weight.dtype).t(), grad_h[s : s + chunk_size]
                if rows.dtype == weight.dtype and not torch.is_autocast_enabled(rows.device.type):
                    torch.mm(gt, weight, out=rows)
                else:
                    rows.copy_(gt @ weight)
            if grad_w is not None:
                grad_w += g @ h[:c].to(acc)
        ctx.save_for_backward(grad_h, grad_w if grad_w is not None else torch.empty(0))
        ctx.weight_grad = grad_w is not None
        ctx.weight_dtype = weight.dtype
        return total / n

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Any:  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h.numel() else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if ctx.weight_grad else None
        return gh, gw, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    chunk_size: int | str = "auto",
    shift: bool = True,
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``labels`` without the full logits.

    Args:
        hidden: ``[B, T, H]`` final (normed) hidden states.
        weight: ``[V, H]`` the LM head's weight (its gradient is computed when it requires one).
        labels: ``[B, T]`` int64; ``ignore_index`` marks positions that do not count.
        chunk_size: tokens per chunk (peak extra memory ~ ``chunk_size * V * 4`` bytes, one
            float32 buffer reused in place for the logits, their exponentials and the gradient);
            ``"auto"``: :func:`auto_chunk_size`.
        shift: causal-LM shift (``hidden[:, :-1]`` predicts ``labels[:, 1:]``), as
            :func:`voxlm.losses.lm_loss`.

    Returns the mean over counted tokens, a 0-d float32 tensor (float64 for float64 inputs; NaN
    if none count, as torch).
    """
    from ._bind import check_tensor

    check_tensor(hidden, "hidden", floating=True)
    check_tensor(weight, "weight", floating=True)
    check_tensor(labels, "labels")
    if hidden.dim() != 3 or labels.dim() != 2 or hidden.shape[:2] != labels.shape:
        raise ShapeError(
            f"hidden/labels: expected [B, T, H] and [B, T], got {list(hidden.shape)} "
            f"and {list(labels.shape)}"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ShapeError(f"weight: expected [V, {hidden.shape[2]}], got {list(weight.shape)}")
    if labels.dtype != torch.int64:
        raise ShapeError(f"labels: expected int64 token ids, got {labels.dtype}")
    if chunk_size == "auto":
        chunk_size = auto_chunk_size(weight.shape[0])
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ConfigError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    if shift:
        hidden, labels = hidden[:, :-1], labels[:, 1:]
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    keep = y != ignore_index
    bad = y[keep]
    if bad.numel() and (int(bad.min()) < 0 or int(bad.max()) >= weight.shape[0]):
        raise ShapeError(f"labels: token ids must be in [0, {weight.shape[0]}) or {ignore_index}")
    if not bool(keep.any()):
        acc = torch.promote_types(weight.dtype, torch.float32)
        return (h.sum() * 0.0 + weight.sum() * 0.0).to(acc) / 0.0  # NaN, still differentiable
    h = h[keep]
    return _LinearCrossEntropy.apply(h, weight, y[keep], chunk_size, torch.is_grad_enabled())

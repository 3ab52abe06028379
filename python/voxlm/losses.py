"""The methods' objectives, computed by the Rust core with torch autograd (CPU and CUDA).

* :func:`focal_loss` and :func:`kl_distill`: PICG's scoring loss and guideline distillation.
* :func:`lm_loss`: the causal-LM loss (shifted, ``ignore_index``), as ``LlamaForCausalLM``.
* :class:`PrototypeBank`: Dia-LLaMA's disease prototype memory bank with its InfoNCE loss.
* :func:`weighted_sum`: objectives such as ``L_LM + 4 * L_DP``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from . import _core
from ._bind import (
    check_budget,
    check_device,
    check_float_dtype,
    check_int,
    check_number,
    check_tensor,
)
from .exceptions import ConfigError, DTypeError, ShapeError, VoxlmTypeError

#: PICG's focal-loss class weights for PI-RADS 1..5.
PICG_FOCAL_ALPHA = (2.0, 2.0, 1.0, 1.0, 1.0)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: torch.Tensor | Sequence[float] | None = None,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Multi-class focal loss ``alpha[y] * (1 - p_y)^gamma * CE`` with ``p = softmax(logits)``.

    Args:
        logits: ``[N, C]``.
        target: ``[N]`` integer class indices in ``[0, C)``.
        alpha: ``[C]`` class weights (PICG: :data:`PICG_FOCAL_ALPHA`), or None for all ones.
        gamma: focusing exponent (>= 0; 0 gives weighted cross-entropy).
        reduction: ``"mean"`` (over N), ``"sum"`` or ``"none"`` (``[N]``).
    """
    check_tensor(logits, "logits", floating=True)
    check_tensor(target, "target")
    gamma = check_number(gamma, "gamma", 0.0)
    if alpha is not None and not isinstance(alpha, torch.Tensor):
        if type(alpha).__module__ == "numpy" and hasattr(alpha, "tolist"):
            alpha = alpha.tolist()
        if isinstance(alpha, (str, bytes)) or not isinstance(alpha, Sequence):
            raise VoxlmTypeError(
                f"alpha: expected a tensor or a sequence of C class weights, got {alpha!r}"
            )
        for i, a in enumerate(alpha):
            check_number(a, f"alpha[{i}]", 0.0)
        alpha = torch.tensor([float(a) for a in alpha], dtype=logits.dtype, device=logits.device)
    if isinstance(alpha, torch.Tensor) and alpha.is_floating_point() and alpha.numel():
        if not bool(torch.isfinite(alpha).all()):
            raise ConfigError("alpha: expected finite class weights, got NaN or inf")
    return _core.focal_loss(logits, target, alpha, gamma, reduction)


def kl_distill(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """PICG's guideline distillation, ``KL(teacher || student)`` with ``batchmean``.

    Equals ``nn.KLDivLoss(reduction="batchmean")(log_softmax(s / T), softmax(t / T))`` over the
    last (feature) axis, ``s = projection(student)``. No ``T^2`` factor is applied.

    Args:
        student: ``[B, D_s]`` features of the scoring network.
        teacher: ``[B, D_t]`` guideline features (detach them for a frozen teacher).
        temperature: softmax temperature ``T > 0``.
        projection: maps ``D_s`` to ``D_t`` (e.g. an ``nn.Linear`` trained with the student and
            dropped at inference); None when the sizes already agree.
    """
    temperature = check_number(temperature, "temperature", 0.0, low_open=True)
    if projection is not None:
        if not callable(projection):
            raise VoxlmTypeError(
                f"projection: expected a module/callable mapping D_s to D_t, got "
                f"{type(projection).__name__}"
            )
        check_tensor(student, "student", floating=True)
        in_f = getattr(projection, "in_features", None)
        if isinstance(in_f, int) and (student.dim() < 1 or student.shape[-1] != in_f):
            raise ShapeError(
                f"student: the projection expects [..., {in_f}] features, got shape "
                f"{tuple(student.shape)}"
            )
        student = projection(student)
    return _core.kl_distill(student, teacher, temperature)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Causal-LM cross-entropy: ``logits[:, :-1]`` predict ``labels[:, 1:]``.

    Args:
        logits: ``[B, T, V]`` (computed in float32 when lower precision, as transformers).
        labels: ``[B, T]`` int64 token ids; ``ignore_index`` marks positions that do not count
            (prompt, padding, image tokens).

    Returns the mean over counted tokens (NaN if none count, as torch).
    """
    return _core.lm_loss(logits, labels, check_int(ignore_index, "ignore_index", None))


def weighted_sum(
    losses: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    weights: Mapping[str, float] | Sequence[float],
) -> torch.Tensor:
    """``sum_i w_i * L_i``, e.g. Dia-LLaMA's
    ``weighted_sum({"lm": l, "dp": d}, {"lm": 1, "dp": 4})``."""
    if isinstance(losses, Mapping):
        if not isinstance(weights, Mapping) or set(weights) != set(losses):
            raise ConfigError(
                f"weights: expected one weight per loss {sorted(losses)}, got "
                f"{sorted(weights) if isinstance(weights, Mapping) else type(weights).__name__}"
            )
        pairs = [(losses[k], check_number(weights[k], f"weights[{k!r}]")) for k in losses]
    else:
        if isinstance(weights, Mapping) or len(weights) != len(losses):
            raise ShapeError(f"weights: expected {len(losses)} weights, got {weights!r}")
        pairs = [
            (x, check_number(w, f"weights[{i}]")) for i, (x, w) in enumerate(zip(losses, weights))
        ]
    if not pairs:
        raise ShapeError("losses: expected at least one loss, got none")
    total = None
    for loss, w in pairs:
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise VoxlmTypeError(f"losses: expected scalar tensors, got {type(loss).__name__}")
        total = loss * w if total is None else total + loss * w
    assert total is not None
    return total


class PrototypeBank(nn.Module):
    """Dia-LLaMA's disease prototype memory bank.

    Each label has a positive and a negative prototype (``pos_sample_memory``,
    ``neg_sample_memory``: ``[L, 1, P]``). Features are projected (``proj``: ``D -> P``) and
    L2-normalised, prototypes L2-normalised, and similarities are cosines divided by a learnable
    temperature ``temp`` (init 0.07). Parameter names follow Dia-LLaMA's ``MyEmbedding``.

    Shapes: ``features [B, L, D]`` (one pooled feature per label, e.g. from
    ``DiseaseAwareAttention``), ``labels [B, L]`` with 0 = negative, 1 = positive.
    """

    def __init__(
        self,
        num_labels: int,
        dim: int,
        proj_dim: int | None = None,
        temperature_init: float = 0.07,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_int(num_labels, "num_labels")
        check_int(dim, "dim")
        if proj_dim is not None:
            check_int(proj_dim, "proj_dim")
        temperature_init = check_number(temperature_init, "temperature_init", 0.0, low_open=True)
        p = proj_dim or dim
        check_budget("PrototypeBank", dim * p + 2 * num_labels * p)
        kw = {"device": check_device(device), "dtype": check_float_dtype(dtype)}
        self.num_labels, self.dim, self.proj_dim = num_labels, dim, p
        self.proj = nn.Linear(dim, p, **kw)
        self.pos_sample_memory = nn.Parameter(torch.randn(num_labels, 1, p, **kw))
        self.neg_sample_memory = nn.Parameter(torch.randn(num_labels, 1, p, **kw))
        self.temp = nn.Parameter(torch.full((), float(temperature_init), **kw))

    def _args(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            self.proj.weight,
            self.proj.bias,
            self.pos_sample_memory,
            self.neg_sample_memory,
            self.temp,
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s_pos, s_neg)``, each ``[B, L]``: cosine / temperature to each label's prototypes."""
        return _core.prototype_similarities(features, *self._args())

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """InfoNCE with the prototype matching the label as target, mean over ``B * L``."""
        check_tensor(labels, "labels")
        if labels.is_complex():
            raise DTypeError(f"labels: expected an integer or bool 0/1 tensor, got {labels.dtype}")
        if labels.is_floating_point() and labels.numel() and labels.device.type != "meta":
            bad = ~((labels == 0) | (labels == 1))
            if bool(bad.any()):
                raise ConfigError(
                    "labels: expected 0 (negative) or 1 (positive), got "
                    f"{labels[bad].flatten()[:4].tolist()}"
                )
        return _core.prototype_loss(features, labels, *self._args())

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` int64: 1 where the positive prototype is the nearer one."""
        s_pos, s_neg = self(features)
        return (s_pos >= s_neg).long()

    def extra_repr(self) -> str:
        return f"num_labels={self.num_labels}, dim={self.dim}, proj_dim={self.proj_dim}"

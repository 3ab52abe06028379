"""End-to-end recipes built from voxlm's parts, one module per method, registered by name:

=================  ==============================================  =====================
name               method                                          module
=================  ==============================================  =====================
``vit3d_llama``    ViT3D alignment of LLaMA-3 / M3D-LaMed          ``vit3d_llama``
``dia_llama``      Dia-LLaMA                                       ``dia_llama``
``rad3d_prefix``   RAD3D-Prefix (anomaly-aware prefix)             ``rad3d_prefix``
``picg``           PICG guideline distillation (PI-RADS)           ``picg``
``llava_rrg``      LLaVA-style two-stage tuning (RRG24)            ``llava_rrg``
=================  ==============================================  =====================
"""

from __future__ import annotations

import importlib

from .registry import get_recipe, recipe_names, register_recipe
from .vit3d_llama import ViT3DLlama

_MODULES = ("vit3d_llama", "dia_llama", "rad3d_prefix", "picg", "llava_rrg", "example")


def _load_all() -> None:
    """Import every recipe module so each registers itself (missing ones are skipped)."""
    for m in _MODULES:
        try:
            importlib.import_module(f"{__name__}.{m}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{m}":
                raise


__all__ = ["ViT3DLlama", "get_recipe", "recipe_names", "register_recipe"]

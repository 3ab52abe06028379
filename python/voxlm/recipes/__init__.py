"""End-to-end recipes built from voxlm's parts."""

from .vit3d_llama import ViT3DLlama

__all__ = ["ViT3DLlama"]

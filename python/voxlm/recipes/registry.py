"""Recipes register themselves by name (the CLI config's ``recipe.name``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..exceptions import ConfigError

T = TypeVar("T")
_RECIPES: dict[str, Any] = {}


def register_recipe(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register_recipe("dia_llama")``."""

    def deco(cls: T) -> T:
        _RECIPES[name] = cls
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return deco


def get_recipe(name: str) -> Any:
    """The recipe class registered as ``name`` (``ConfigError`` listing the known names)."""
    from . import _load_all

    _load_all()
    if not isinstance(name, str):
        raise ConfigError(
            "recipe.name: expected the name of a registered recipe "
            f"({', '.join(sorted(_RECIPES))}), got {name!r}"
        )
    if name not in _RECIPES:
        raise ConfigError(
            f"recipe.name: unknown recipe {name!r}; known: {', '.join(sorted(_RECIPES))}"
        )
    return _RECIPES[name]


def recipe_names() -> list[str]:
    from . import _load_all

    _load_all()
    return sorted(_RECIPES)

"""Lazy re-exports for the dataset packages.

A dataset package (`mtpsl_datasets.<name>`) holds its TFDS builder and its DatasetSpec
(`<name>.spec`). The spec must be importable without TensorFlow Datasets, so the package
re-exports the builder's names lazily: the first access imports the builder module, which
registers the builder with TFDS.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Sequence


def exports(package: str, module: str, names: Sequence[str]) -> tuple[Callable, Callable]:
    """`(__getattr__, __dir__)` for `package`, re-exporting `names` of `module` on demand."""
    names = tuple(names)

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(module), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(names) | set(vars(sys.modules[package])))

    return __getattr__, __dir__

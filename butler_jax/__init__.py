"""butler-jax: TokenButler (learned KV-cache token selection) in JAX/Flax with Pallas GPU kernels.

    import butler_jax
    model = butler_jax.load("embedded")
    print(model.generate("Tell me a joke", method="tokenbutler", budget="sparsity=0.5").texts[0])

The Pallas kernels are `butler_jax.kernels`: installed, the repository's top-level `kernels/`
folder is mapped there (pyproject.toml, package_dir); in a source checkout the finder below
resolves that name to the same folder, so no top-level `kernels` module is needed.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_SOURCE_KERNELS = Path(__file__).resolve().parent.parent / "kernels"


class _SourceKernelsFinder(importlib.abc.MetaPathFinder):
    """Source checkout only: `butler_jax.kernels` -> the repository's `kernels/` folder."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "butler_jax.kernels":
            return None
        return importlib.util.spec_from_file_location(
            fullname, _SOURCE_KERNELS / "__init__.py", submodule_search_locations=[str(_SOURCE_KERNELS)]
        )


if not (Path(__file__).resolve().parent / "kernels").is_dir() and (_SOURCE_KERNELS / "__init__.py").is_file():
    sys.meta_path.append(_SourceKernelsFinder())


def __getattr__(name: str):
    """`load`, `Model` and `Generation` from butler_jax.api, imported on first use."""
    if name in ("load", "Model", "Generation"):
        from butler_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'butler_jax' has no attribute {name!r}")


__all__ = ["Generation", "Model", "load"]

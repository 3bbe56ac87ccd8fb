"""butler-jax: TokenButler (learned KV-cache token selection) in JAX/Flax with Pallas GPU kernels.

    import butler_jax
    model = butler_jax.load("embedded")
    print(model.generate("Tell me a joke", method="tokenbutler", budget="sparsity=0.5").texts[0])

pyproject.toml installs two folders of the repository inside this package (package_dir):
`kernels/` as `butler_jax.kernels` and the root scripts (train.py, evaluate.py, convert_torch.py)
as `butler_jax.commands`, so nothing but `butler_jax` is installed at the top level. In a source
checkout (or an editable install) the finder below gives those names the same folders. `kernels/` has
no `__init__.py`: from the repository root it is at most a namespace portion, so Hugging Face's
installed `kernels` package (a dependency of transformers >= 5.25) still wins `import kernels`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
_SOURCE_PACKAGES = {"butler_jax.kernels": _ROOT / "kernels", "butler_jax.commands": _ROOT}


class _SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Source tree only: `butler_jax.kernels` -> kernels/, `butler_jax.commands` -> the root scripts."""

    def find_spec(self, fullname, path=None, target=None):
        folder = _SOURCE_PACKAGES.get(fullname)
        if folder is None:
            return None
        if (folder / "__init__.py").is_file():
            return importlib.util.spec_from_file_location(fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])
        spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)  # a namespace package
        spec.submodule_search_locations = [str(folder)]
        return spec


if not (Path(__file__).resolve().parent / "kernels").is_dir() and (_ROOT / "kernels" / "topk_select.py").is_file():
    sys.meta_path.insert(0, _SourceTreeFinder())  # before an editable install's finder, which may map another checkout


def __getattr__(name: str):
    """`load`, `Model` and `Generation` from butler_jax.api, imported on first use."""
    if name in ("load", "Model", "Generation"):
        from butler_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'butler_jax' has no attribute {name!r}")


__all__ = ["Generation", "Model", "load"]

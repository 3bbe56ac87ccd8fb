"""Packaging: what a non-editable install holds, and the library working with torch absent."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_subpackage_is_listed() -> None:
    """pyproject.toml lists packages by hand (for the package_dir mappings): none may be missing."""
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "butler_jax").rglob("__init__.py")}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert {"butler_jax.kernels", "butler_jax.configs", "butler_jax.commands"} <= listed


def _has_build_backend() -> bool:
    """This environment's setuptools meets [build-system] requires (then no package index is needed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("setuptools").split(".")[0]) >= 77
    except PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`pip install --no-deps --target` of a copy of the source tree (non-editable)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "outputs", "runs", "bench", "tests",
        ".gguf*", ".whl", ".eval-data", ".train-*", ".ckpt*", ".wt-*"))
    isolation = ["--no-build-isolation"] if _has_build_backend() else []  # else pip fetches setuptools
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation, "--target", str(tmp / "site"), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "site"


def test_install_holds_only_butler_jax(installed) -> None:
    top = {p.name for p in installed.iterdir()} - {"bin"}
    assert {t for t in top if not t.endswith(".dist-info")} == {"butler_jax"}
    dist = next(installed.glob("butler_jax-*.dist-info"))
    assert (dist / "top_level.txt").read_text().split() == ["butler_jax"]
    scripts = (dist / "entry_points.txt").read_text()
    for name in ("butler-generate", "butler-train", "butler-evaluate", "butler-convert"):
        assert name in scripts
    for path in ("kernels/topk_select.py", "configs/smollm2-135m.yaml", "configs/eval_default.yaml",
                 "commands/train.py", "commands/evaluate.py", "commands/convert_torch.py",
                 "assets/smollm2-135m-predictor/predictor.safetensors", "eval/data/wikitext-2-raw/wiki.test.raw"):
        assert (installed / "butler_jax" / path).is_file(), path


# Run in a subprocess that sees the --target install and this environment's dependencies, but not
# the source tree: neither the repository root on sys.path nor an editable install's finder.
ISOLATE = """
import sys
from pathlib import Path
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [{site!r}] + [p for p in sys.path if p and Path(p).resolve() != Path({repo!r})]
"""

# No regular package in ROOT/kernels answers `import kernels` (Hugging Face's `kernels`, a dependency
# of transformers >= 5.25, may be installed and must win), and transformers' probe of it imports.
KERNELS_NOT_SHADOWED = """
import importlib, importlib.util
from pathlib import Path
spec = importlib.util.find_spec("kernels")
ours = (Path({root!r}) / "kernels").resolve()
assert spec is None or spec.origin is None or not Path(spec.origin).resolve().is_relative_to(ours), spec
try:
    importlib.import_module("transformers.integrations.hub_kernels")
except ModuleNotFoundError as e:  # older transformers: no such module
    assert e.name == "transformers.integrations.hub_kernels", e
"""

CHECK_INSTALLED = """
import butler_jax, butler_jax.kernels.topk_select as topk
from butler_jax.paths import SHIPPED_PREDICTOR, resolve_config
from butler_jax.config import load_yaml
site = Path({site!r}).resolve()
assert Path(butler_jax.__file__).is_relative_to(site) and Path(topk.__file__).is_relative_to(site), topk.__file__
assert resolve_config("configs/eval_default.yaml").is_relative_to(site)
assert load_yaml("eval_default")["model"]["source"] == "embedded"  # its `base:` include, packaged too
assert (SHIPPED_PREDICTOR / "predictor.json").is_file() and SHIPPED_PREDICTOR.is_relative_to(site)
from butler_jax.commands import train, evaluate, convert_torch
print("ok")
"""


def run_isolated(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_installed_package_has_no_top_level_kernels(installed, tmp_path) -> None:
    code = (ISOLATE.format(site=str(installed), repo=str(REPO)) + KERNELS_NOT_SHADOWED.format(root=str(installed))
            + CHECK_INSTALLED.format(site=str(installed)))
    done = run_isolated(code, tmp_path)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_repository_root_does_not_shadow_hugging_face_kernels() -> None:
    """Run from the repository root (its folder first on sys.path, as `python evaluate.py` or `python -m pytest`),
    `kernels/` is no regular package (no __init__.py), so transformers finds Hugging Face's `kernels` when it is
    installed (transformers 5.25 failed `from kernels import CUDAProperties` on our folder), and
    `butler_jax.kernels` still maps to it."""
    code = KERNELS_NOT_SHADOWED.format(root=str(REPO)) + (
        "import butler_jax.kernels.topk_select as topk\n"
        f"assert Path(topk.__file__).resolve() == Path({str(REPO / 'kernels' / 'topk_select.py')!r}).resolve()\n"
        "print('ok')\n")
    done = run_isolated(code, REPO)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


# torch blocked: `sys.modules["torch"] = None` makes `import torch` raise ImportError and
# importlib.util.find_spec("torch") return None (how transformers probes for it).
WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None
import numpy as np, ml_dtypes
import butler_jax
from butler_jax.weights.tensors import read_safetensors, write_safetensors
x = (np.arange(12, dtype=np.float32) / 7).astype(ml_dtypes.bfloat16).reshape(3, 4)
write_safetensors({{"x": x}}, {tmp!r} + "/bf16.safetensors", metadata={{"format": "pt"}})
back = read_safetensors({tmp!r} + "/bf16.safetensors")["x"]
assert back.dtype == ml_dtypes.bfloat16 and (back.view(np.uint16) == x.view(np.uint16)).all()
model = butler_jax.load("embedded")  # the GGUF model and the shipped predictor (safetensors)
assert model.predictor is not None
from butler_jax.weights.tokenizer import apply_chat_template
text = apply_chat_template(model.tokenizer, "What is the capital of France?")  # a GGUF tokenizer without torch
prompt = model.tokenizer.encode(text)
assert model.tokenizer.decode(prompt) == text and prompt[-4:] == [1, 520, 9531, 198], prompt  # <|im_start|>assistant\n
out = model.generate("What is the capital of France?", method="tokenbutler", budget="sparsity=0.5",
                     max_new_tokens=2)  # chat template, encode, prefill + 1 decode step, decode
assert len(out.tokens[0]) == 2 and out.texts[0] == model.tokenizer.decode(out.tokens[0], skip_special_tokens=True)
assert sys.modules["torch"] is None
print("ok", out)
"""


def test_loads_and_decodes_with_torch_blocked(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", WITHOUT_TORCH.format(tmp=str(tmp_path))], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]

"""Where packaged configs and shipped data live, installed or in a source checkout.

Installed, `configs/` is inside the package (`butler_jax/configs`, by package_dir mapping); in a
source checkout it is the repository's top-level `configs/`. Shipped data (`butler_jax/assets`,
`butler_jax/eval/data`, ...) is inside the package either way.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_PREDICTORS = {  # name -> folder: trained predictors for the embedded SmolLM2-135M
    "shipped": PACKAGE_DIR / "assets" / "smollm2-135m-predictor",  # paper predictor v2 (the default)
    "shipped-longctx": PACKAGE_DIR / "assets" / "smollm2-135m-longctx-predictor",  # long-context producer predictor
}
SHIPPED_PREDICTOR = SHIPPED_PREDICTORS["shipped"]
DEFAULT_MODEL_CONFIG = "smollm2-135m"


def configs_dir() -> Path:
    """The packaged configs folder (installed copy first, else the source checkout's)."""
    installed = PACKAGE_DIR / "configs"
    return installed if installed.is_dir() else PACKAGE_DIR.parent / "configs"


def packaged_configs() -> list[str]:
    """Names of the packaged configs (file stems)."""
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def resolve_config(spec: str | Path) -> Path:
    """An existing file as given; else a packaged config named `X`, `X.yaml` or `configs/X.yaml`.

    Returns `spec` unchanged when neither exists (the caller reports the missing file)."""
    path = Path(spec).expanduser()
    if path.is_file() or path.is_absolute() or len(path.parts) > 2 or (len(path.parts) == 2 and path.parts[0] != "configs"):
        return path
    packaged = configs_dir() / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    return packaged if packaged.is_file() else path


def resolve_data(spec: str | Path) -> Path:
    """A path as given when it exists; a repository-relative `butler_jax/...` path inside the package."""
    path = Path(spec).expanduser()
    if path.exists() or path.is_absolute() or path.parts[:1] != ("butler_jax",):
        return path
    return PACKAGE_DIR.parent / path

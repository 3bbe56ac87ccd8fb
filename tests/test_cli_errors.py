"""Every CLI error case: exit status 2, one stderr line naming the bad value, nothing lost or overwritten.

Table-driven: each case builds its inputs under tmp_path, runs one CLI in-process through
`run_cli` (the same wrapper `__main__` uses), and checks the exit status, that stderr names the bad
value, and that the paths the case protects are byte-identical afterwards. A few cases run as
subprocesses from another directory, where the working directory and tracebacks matter.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

import convert_torch
import evaluate
import train
from butler_jax import generate as generate_cli
from butler_jax.cli import run_cli
from butler_jax.config import ModelConfig, load_yaml
from butler_jax.errors import ButlerError, CheckpointError, ConfigError, InputError
from butler_jax.weights.predictor_torch import CARRIED_FILE, load_jax_predictor
from tests.test_convert_predictor import DIMS, _model_yaml, _paper_state, _write_source

REPO = Path(__file__).resolve().parents[1]
TRAIN_BASE = ["--config", str(REPO / "configs" / "train_tiny.yaml"), "train.progress=false", "train.tensorboard=false",
              "data.batch_size=2", "data.seq_len=64", "train.query_chunk=32"]


# ----------------------------------------------------------------------------- inputs the cases use


def _jax_predictor(tmp: Path) -> dict[str, str]:
    """A v2 .pt, its JAX conversion (with carried tensors) and the model YAML."""
    src, _ = _write_source(tmp, "v2", "float32")
    pred = tmp / "pred"
    assert convert_torch.main(["predictor-to-jax", str(src), str(pred), "--format", "v2", "--model", _model_yaml(tmp)]) == 0
    return {"pt": str(src), "pred": str(pred), "yaml": _model_yaml(tmp)}


def _jax_model(tmp: Path) -> dict[str, str]:
    from butler_jax.models.llama import init_params
    from butler_jax.weights.model_checkpoint import save_jax_model

    cfg = ModelConfig(**DIMS)
    save_jax_model(init_params(cfg), cfg, tmp / "model")
    return {"model": str(tmp / "model")}


def _existing_output(tmp: Path) -> dict[str, str]:
    paths = _jax_predictor(tmp)
    (tmp / "taken").mkdir()
    (tmp / "taken" / "keep.txt").write_text("an older result")
    return {**paths, "taken": str(tmp / "taken")}


def _bad_tensor(kind: str) -> Callable[[Path], dict[str, str]]:
    def build(tmp: Path) -> dict[str, str]:
        state = _paper_state("v2", "float32")
        name = "sparse_token_predictor.input_proj.weight"
        state[name] = state[name].to(torch.int64) if kind == "int64" else state[name] * float("nan")
        torch.save([state], tmp / "bad.pt")
        return {"pt": str(tmp / "bad.pt"), "yaml": _model_yaml(tmp)}
    return build


def _wrong_rank(tmp: Path) -> dict[str, str]:
    state = _paper_state("v2", "float32")
    state["sparse_token_predictor.input_proj.weight"] = state["sparse_token_predictor.input_proj.weight"].flatten()
    torch.save([state], tmp / "bad.pt")
    return {"pt": str(tmp / "bad.pt"), "yaml": _model_yaml(tmp)}


def _text(data: bytes, name: str) -> Callable[[Path], dict[str, str]]:
    def build(tmp: Path) -> dict[str, str]:
        (tmp / name).write_bytes(data)
        return {"text": str(tmp / name)}
    return build


def _yaml(text: bytes | str, name: str = "bad.yaml") -> Callable[[Path], dict[str, str]]:
    def build(tmp: Path) -> dict[str, str]:
        path = tmp / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return {"cfg": str(path)}
    return build


def _trained(tmp: Path) -> dict[str, str]:
    """A finished 2-step tiny run (copied from one run per session)."""
    shutil.copytree(_trained_once(), tmp / "run")
    return {"run": str(tmp / "run")}


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    main: Callable
    argv: Callable[[dict[str, str]], list[str]]
    message: str  # must appear in stderr (names the bad value)
    setup: Callable[[Path], dict[str, str]] = lambda tmp: {}
    keep: tuple[str, ...] = ()  # setup keys whose files must be byte-identical afterwards


CASES = [
    # conversion: never lose the source or an existing output
    Case("predictor-to-torch into its own source", convert_torch.main,
         lambda p: ["predictor-to-torch", p["pred"], p["pred"] + "/predictor.safetensors"],
         "would overwrite the source", _jax_predictor, ("pred", "pt")),
    Case("predictor-to-torch onto its source folder --force", convert_torch.main,
         lambda p: ["predictor-to-torch", p["pred"], p["pred"], "--force"], "would overwrite the source", _jax_predictor, ("pred",)),
    Case("jax-to-hf J J", convert_torch.main, lambda p: ["jax-to-hf", p["model"], p["model"]],
         "would overwrite the source", _jax_model, ("model",)),
    Case("output contains the source", convert_torch.main,
         lambda p: ["predictor-to-jax", p["pt"], str(Path(p["pt"]).parent), "--format", "v2", "--model", p["yaml"]],
         "would overwrite the source", _jax_predictor, ("pt", "pred")),
    Case("existing output without --force", convert_torch.main,
         lambda p: ["predictor-to-jax", p["pt"], p["taken"], "--format", "v2", "--model", p["yaml"]],
         "already exists", _existing_output, ("taken", "pt")),
    Case("butler export: predictor is the output", convert_torch.main,
         lambda p: ["jax-to-hf", p["pred"] + "/../pt-model", p["pred"], "--predictor", p["pred"]],
         "would overwrite the source", _jax_predictor, ("pred",)),
    Case("int64 predictor tensor", convert_torch.main,
         lambda p: ["predictor-to-jax", p["pt"], p["pt"] + ".out", "--format", "v2", "--model", p["yaml"]],
         "dtype int64", _bad_tensor("int64"), ("pt",)),
    Case("NaN predictor tensor", convert_torch.main,
         lambda p: ["predictor-to-jax", p["pt"], p["pt"] + ".out", "--format", "v2", "--model", p["yaml"]],
         "NaN or infinite", _bad_tensor("nan"), ("pt",)),
    Case("wrong-rank predictor tensor", convert_torch.main,
         lambda p: ["predictor-to-jax", p["pt"], p["pt"] + ".out", "--format", "v2", "--model", p["yaml"]],
         "'input_proj.weight' has shape (512,), expected 2 dimensions", _wrong_rank, ("pt",)),
    # config files
    Case("missing config file", train.main, lambda p: ["--config", "/nonexistent/x.yaml"], "'/nonexistent/x.yaml' does not exist"),
    Case("YAML syntax error names file:line", train.main, lambda p: ["--config", p["cfg"]], "bad.yaml:3:1 is not valid YAML",
         _yaml("train:\n  steps: [1, 2\n"), ("cfg",)),
    Case("base: includes itself", train.main, lambda p: ["--config", p["cfg"]], "includes itself",
         _yaml("base: bad.yaml\n"), ("cfg",)),
    Case("non-UTF-8 config", train.main, lambda p: ["--config", p["cfg"]], "not UTF-8", _yaml(b"train:\n  steps: \xff\n")),
    Case("unknown key", train.main, lambda p: [*TRAIN_BASE, "train.stepz=3"], "unknown key train.stepz"),
    Case("bad override", train.main, lambda p: [*TRAIN_BASE, "train.steps"], "'train.steps' must look like section.key=value"),
    Case("negative learning rate", train.main, lambda p: [*TRAIN_BASE, "train.learning_rate=-1"], "train.learning_rate=-1"),
    Case("seq_len beyond the model's positions", train.main,
         lambda p: [*TRAIN_BASE, "data.seq_len=4096", "train.query_chunk=64"], "data.seq_len=4096 exceeds"),
    Case("non-UTF-8 training text", train.main,
         lambda p: [*TRAIN_BASE, f"data.sources=[{p['text']}]", f"train.output_dir={p['text']}.run"],
         "bad.txt is not UTF-8 text", _text(b"caf\xe9 " * 200, "bad.txt"), ("text",)),
    Case("bad JSONL training record", train.main,
         lambda p: [*TRAIN_BASE, f"data.sources=[{p['text']}]", f"train.output_dir={p['text']}.run"],
         "bad.jsonl:2 is not a JSON record", _text(b'{"text": "a b c"}\n{"text": \n', "bad.jsonl"), ("text",)),
    # training resume
    Case("resume without checkpoints", train.main,
         lambda p: [*TRAIN_BASE, f"train.output_dir={p['cfg']}.run", "--resume"], "no checkpoint", _yaml("")),
    Case("fresh run over a finished one", train.main,
         lambda p: [*TRAIN_BASE, "train.steps=2", "train.save_every=1", f"train.output_dir={p['run']}"], "pass --resume",
         _trained, ("run",)),
    Case("resume with changed predictor.intdim", train.main,
         lambda p: [*TRAIN_BASE, "train.steps=2", "train.save_every=1", f"train.output_dir={p['run']}", "predictor.intdim=16",
                    "--resume"], "predictor.intdim=16", _trained, ("run",)),
    Case("resume with changed learning_rate", train.main,
         lambda p: [*TRAIN_BASE, "train.steps=2", "train.save_every=1", f"train.output_dir={p['run']}",
                    "train.learning_rate=0.1", "--resume"], "train.learning_rate=0.1", _trained, ("run",)),
    # evaluate: every range checked before the model loads
    Case("empty method list", evaluate.main, lambda p: ["eval.methods=[]"], "eval.methods is empty"),
    Case("unknown method", evaluate.main, lambda p: ["eval.methods=[dense,bogus]"], "'bogus'"),
    Case("empty task list", evaluate.main, lambda p: ["eval.tasks=[]"], "eval.tasks is empty"),
    Case("empty budgets", evaluate.main, lambda p: ["eval.methods=[oracle]", "eval.budgets=[]"], "eval.budgets is empty"),
    Case("negative ppl_context", evaluate.main, lambda p: ["eval.ppl_context=-64"], "eval.ppl_context=-64"),
    Case("zero ppl_context", evaluate.main, lambda p: ["eval.ppl_context=0"], "eval.ppl_context=0"),
    Case("ppl_context beyond positions", evaluate.main, lambda p: ["eval.ppl_context=100000"], "eval.ppl_context=100000"),
    Case("negative ppl_windows", evaluate.main, lambda p: ["eval.ppl_windows=-1"], "eval.ppl_windows=-1"),
    Case("ruler_length beyond positions", evaluate.main, lambda p: ["eval.ruler_length=9471"], "eval.ruler_length=9471"),
    Case("budget larger than the context", evaluate.main, lambda p: ["eval.budgets=[600]"], "eval.budgets entry '600'"),
    Case("unparsable budget", evaluate.main, lambda p: ["eval.budgets=[lots]"], "eval.budgets entry 'lots'"),
    Case("missing predictor folder", evaluate.main, lambda p: ["predictor.checkpoint=/nope"], "predictor.checkpoint='/nope'"),
    # generate: arguments before the weights load
    Case("top_p above 1", generate_cli.main, lambda p: ["--prompt", "hi", "--top-p", "2"], "top_p=2.0"),
    Case("negative temperature", generate_cli.main, lambda p: ["--prompt", "hi", "--temperature", "-1"], "temperature=-1.0"),
    Case("zero new tokens", generate_cli.main, lambda p: ["--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens 0"),
    Case("prompt beyond positions", generate_cli.main, lambda p: ["--prompt", "hi", "--max-new-tokens", "9000"],
         "exceeds the model's 8192 positions"),
]


def _snapshot(path: str) -> dict[str, bytes]:
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(f): f.read_bytes() for f in files}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_error(case: Case, tmp_path, capsys) -> None:
    paths = case.setup(tmp_path)
    before = {k: _snapshot(paths[k]) for k in case.keep}
    capsys.readouterr()
    rc = run_cli(case.main, case.argv(paths))
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and case.message in lines[0], err
    for key in case.keep:
        assert _snapshot(paths[key]) == before[key], f"{key} changed"


_TRAINED: list[Path] = []


def _trained_once() -> Path:
    if not _TRAINED:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="butler-trained-")) / "run"
        assert run_cli(train.main, [*TRAIN_BASE, "train.steps=2", "train.save_every=1", f"train.output_dir={out}"]) == 0
        _TRAINED.append(out)
    return _TRAINED[0]


# ----------------------------------------------------------------------------- not errors, but guarded


def test_safe_setting_change_on_resume_is_allowed_and_recorded(tmp_path) -> None:
    run = Path(_trained(tmp_path)["run"])
    argv = [*TRAIN_BASE, "train.steps=2", "train.save_every=1", f"train.output_dir={run}", "train.log_every=2", "--resume"]
    assert run_cli(train.main, argv) == 0
    record = json.loads((run / "resumes.jsonl").read_text())
    assert record["step"] == 2 and record["changed"]["train.log_every"] == [None, 2]
    assert set(record["changed"]) == {"train.log_every", "train.output_dir"}  # the copy lives elsewhere


def test_force_replaces_output_without_stale_files(tmp_path) -> None:
    """--force clears OUT first: a longctx conversion into a folder of a v2 one keeps no torch_carried file."""
    paths = _jax_predictor(tmp_path)
    assert (Path(paths["pred"]) / CARRIED_FILE).is_file()
    longctx, _ = _write_source(tmp_path, "longctx", "float32")
    argv = ["predictor-to-jax", str(longctx), paths["pred"], "--format", "longctx", "--model", paths["yaml"], "--force"]
    assert run_cli(convert_torch.main, argv) == 0
    assert not (Path(paths["pred"]) / CARRIED_FILE).exists()
    assert load_jax_predictor(paths["pred"]).carried == {}


def test_stale_carried_file_is_refused(tmp_path) -> None:
    """A torch_carried.safetensors that predictor.json does not list (left by an older tool) is not written back."""
    paths = _jax_predictor(tmp_path)
    other = tmp_path / "other"
    longctx, _ = _write_source(tmp_path, "longctx", "float32")
    assert convert_torch.main(["predictor-to-jax", str(longctx), str(other), "--format", "longctx", "--model", paths["yaml"]]) == 0
    shutil.copy(Path(paths["pred"]) / CARRIED_FILE, other / CARRIED_FILE)
    with pytest.raises(CheckpointError, match="does not hold the 0 carried tensors"):
        load_jax_predictor(other)


def test_failed_conversion_leaves_no_output(tmp_path) -> None:
    paths = _bad_tensor("nan")(tmp_path)
    out = tmp_path / "out"
    assert run_cli(convert_torch.main, ["predictor-to-jax", paths["pt"], str(out), "--format", "v2", "--model", paths["yaml"]]) == 2
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_token_ids_outside_the_vocabulary() -> None:
    from butler_jax.decode import generate
    from butler_jax.models.llama import LlamaForCausalLM, init_params

    cfg = ModelConfig(**DIMS)
    with pytest.raises(InputError, match="token id 8 outside the vocabulary"):
        generate(LlamaForCausalLM(cfg), init_params(cfg), [[1, 2, 8]], 2)


def test_config_paths_resolve_against_the_config_folder(tmp_path, monkeypatch) -> None:
    (tmp_path / "cfg" / "pred").mkdir(parents=True)
    (tmp_path / "cfg" / "run.yaml").write_text("predictor: {checkpoint: pred}\ntrain: {output_dir: out}\n"
                                               "data: {sources: [butler_jax/train/data/pg19-test-books]}\n")
    monkeypatch.chdir(tmp_path)
    data = load_yaml("cfg/run.yaml")
    assert data["predictor"]["checkpoint"] == str((tmp_path / "cfg" / "pred").resolve())
    assert data["train"]["output_dir"] == str((tmp_path / "cfg" / "out").resolve())
    assert data["data"]["sources"] == [str(REPO / "butler_jax" / "train" / "data" / "pg19-test-books")]  # the package's


def test_error_carries_what_value_fix() -> None:
    exc = ConfigError("eval.ppl_context must be >= 2", value=0, fix="use 512")
    assert str(exc) == "eval.ppl_context must be >= 2 (got 0); use 512"
    assert isinstance(exc, ButlerError) and isinstance(exc, ValueError)


def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})


def test_cli_from_another_directory_one_line_and_debug_traceback(tmp_path) -> None:
    """From another folder the default configs are found; errors are one line, --debug shows the traceback."""
    plain = _script(str(REPO / "evaluate.py"), "eval.methods=[]", cwd=tmp_path)
    from butler_jax.sparsity import METHODS

    assert plain.returncode == 2 and plain.stderr.strip() == f"error: eval.methods is empty; list at least one of {list(METHODS)}"
    debug = _script(str(REPO / "evaluate.py"), "eval.methods=[]", "--debug", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
    gen = _script("-m", "butler_jax.generate", "--prompt", "hi", "--max-new-tokens", "9000", cwd=tmp_path)
    assert gen.returncode == 2 and "8192 positions" in gen.stderr and "Traceback" not in gen.stderr
    conv = _script(str(REPO / "convert_torch.py"), "jax-to-hf", str(tmp_path), str(tmp_path), cwd=tmp_path)
    assert conv.returncode == 2 and "would overwrite the source" in conv.stderr

"""bench/decode_latency's --profile report: kernel families, the per-token summary and its markdown."""

from __future__ import annotations

import pytest

from bench.decode_latency import NO_GPU, kernel_family, profile_markdown, profile_summary
from bench.timing import DeviceTimes

META = dict(device="NVIDIA H200", command="python bench/decode_latency.py --profile", jax="0", date="d", commit="c")


@pytest.mark.parametrize("name, family", [
    ("sparse_decode_attention", "attention"), ("combine_splits", "attention"), ("importance_scores", "scoring"),
    ("topk_emit", "selection"), ("_hist_kernel", "selection"), ("sm90_xmma_gemm_bf16bf16_bf16f32", "matmul"),
    ("nvjet_tst_64x8_64x16", "matmul"), ("loop_select_fusion", "XLA fusion"), ("input_reduce_fusion", "XLA fusion"),
    ("MemcpyD2H", "memory"), ("mystery", "other")])
def test_kernel_family(name: str, family: str) -> None:
    assert kernel_family(name) == family


def test_summary_per_token() -> None:
    times = DeviceTimes({"sparse_decode_attention": 300.0, "gemm": 100.0, "loop_fusion": 40.0},
                        {"sparse_decode_attention": 62.0, "gemm": 8.0, "loop_fusion": 4.0}, None, 500.0)
    p = profile_summary(times, tokens=2)
    assert p["kernel_us"] == pytest.approx(220.0) and p["span_us"] == pytest.approx(250.0)
    assert p["gap_us"] == pytest.approx(30.0) and p["launches"] == pytest.approx(37.0)
    assert p["span_source"] == "kernel extent"
    assert list(p["families"]) == ["attention", "matmul", "XLA fusion"]
    assert p["families"]["attention"] == dict(us=150.0, launches=31.0, kernels=1)
    assert [k["name"] for k in p["kernels"]] == ["sparse_decode_attention", "gemm", "loop_fusion"]


def test_no_gpu_is_a_note_and_the_markdown_says_so() -> None:
    p = profile_summary(DeviceTimes({}, {}, None, None), tokens=16)
    assert p == dict(note=NO_GPU)
    row = dict(method="dense", batch=1, context=131072, ms_per_token=9.0, floor_ms=4.0)
    assert NO_GPU in profile_markdown(META, [{**row, **p}])


def test_markdown_tables() -> None:
    times = DeviceTimes({"topk_emit": 60.0, "gemm": 40.0}, {"topk_emit": 2.0, "gemm": 4.0}, 120.0, 130.0)
    row = dict(method="tokenbutler_i1", batch=1, context=131072, ms_per_token=9.0, floor_ms=4.0)
    text = profile_markdown(META, [{**row, **profile_summary(times, tokens=1)}], top=1)
    assert "## tokenbutler_i1, B=1" in text and "span 120 us (XLA Modules), gap 20 us" in text
    assert "| selection | 60.0 | 60.0 | 2.0 | 1 |" in text
    assert "| `topk_emit` | selection | 60.0 | 60.0 | 2.0 | 30.00 |" in text and "`gemm`" not in text


def test_profile_plot(tmp_path) -> None:
    from bench.plot_decode import plot_profile

    gpu = dict(method="tokenbutler_i1", batch=1, context=131072, ms_per_token=9.2, floor_ms=4.0, gap_us=139.0,
               families={"matmul": dict(us=4200.0), "selection": dict(us=1400.0)})
    note = dict(method="dense", batch=1, context=131072, ms_per_token=9.5, floor_ms=7.3, note=NO_GPU)
    plot_profile([gpu, note], tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="no profile with GPU kernel data"):
        plot_profile([note], tmp_path / "q.png")

"""bench.timing's profiler aggregation (`aggregate_device_events`) on synthetic trace events."""

from __future__ import annotations

import pytest

from bench.timing import DeviceEvent, aggregate_device_events

GPU, STREAM = "/device:GPU:0", "Stream #14(Compute)"


def test_kernels_are_summed_by_name_per_call_over_streams_and_gpus() -> None:
    events = [(GPU, STREAM, "gemm", 4000), (GPU, STREAM, "gemm", 2000), (GPU, "Stream #15(Compute)", "gemm", 2000),
              ("/device:GPU:1", STREAM, "gemm", 4000), (GPU, STREAM, "topk_emit", 20000)]
    t = aggregate_device_events(events, calls=2)
    assert list(t.kernels_us) == ["topk_emit", "gemm"]  # most time first
    assert t.kernels_us == pytest.approx({"topk_emit": 10.0, "gemm": 6.0})
    assert t.launches == pytest.approx({"topk_emit": 0.5, "gemm": 2.0})
    assert t.kernel_us == pytest.approx(16.0)
    assert t.module_us is None and t.extent_us is None and t.span_us is None  # no starts, no module line


def test_host_planes_and_derived_lines_are_not_kernels() -> None:
    events = [("/host:CPU", "python", "gemm", 9000), (GPU, "XLA Ops", "dot.1", 9000),
              (GPU, "_counters_", "mem", 9000), (GPU, STREAM, "gemm", 1000)]
    assert aggregate_device_events(events, calls=1).kernels_us == {"gemm": pytest.approx(1.0)}


def test_module_line_is_the_span() -> None:
    events = [DeviceEvent(GPU, "XLA Modules", "jit_run", 50000, 0), DeviceEvent(GPU, STREAM, "fusion", 10000, 5000),
              DeviceEvent(GPU, "XLA Modules", "jit_run", 30000, 90000), DeviceEvent(GPU, STREAM, "fusion", 10000, 95000)]
    t = aggregate_device_events(events, calls=2)
    assert t.module_us == pytest.approx(40.0)
    assert t.extent_us == pytest.approx(50.0)  # 5 us to 105 us over two calls
    assert t.span_us == pytest.approx(40.0)  # the module line wins


def test_without_a_module_line_the_span_is_the_kernel_extent() -> None:
    events = [(GPU, STREAM, "a", 2000, 1000), (GPU, STREAM, "b", 3000, 10000)]
    t = aggregate_device_events(events, calls=1)
    assert t.span_us == pytest.approx(12.0) and t.kernel_us == pytest.approx(5.0)


def test_no_gpu_events() -> None:
    t = aggregate_device_events([("/host:CPU", "python", "f", 1000, 0)], calls=3)
    assert t.kernels_us == {} and t.launches == {} and t.kernel_us == 0 and t.span_us is None

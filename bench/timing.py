"""Timing helpers of the benchmarks: best-of-N wall time, the device bandwidths that every
floor is computed from: `read_bandwidth` (a read-only stream, the ceiling of decode, which mostly
reads) and `copy_bandwidth` (read + write), and device time per GPU kernel from a profiler trace
(`device_times`, `device_event_us`; the pure part: `aggregate_device_events`)."""

from __future__ import annotations

import collections
import dataclasses
import glob
import tempfile
import time
from typing import Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp


def best_seconds(fn, *args, repeats: int = 3) -> float:
    """Least wall time of `repeats` calls fn(*args), each waited for; compile / warm up before calling."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def _random(nbytes: int) -> jax.Array:
    return jax.random.uniform(jax.random.PRNGKey(0), (nbytes // 4,), jnp.float32)


def copy_bandwidth(nbytes: int = 2 << 30, reps: int = 20) -> float:
    """Bytes/s (read + write counted) of an elementwise pass over `nbytes`, dispatch amortised in a fori_loop."""
    x = _random(nbytes)

    @jax.jit
    def loop(x):
        return jax.lax.fori_loop(0, reps, lambda i, y: y * 1.0000001 + 1e-9, x)

    loop(x).block_until_ready()
    seconds = best_seconds(loop, x, repeats=2)
    del x
    return 2 * nbytes * reps / seconds


def read_bandwidth(nbytes: int = 2 << 30, reps: int = 20) -> float:
    """Bytes/s of a read-only stream: a full sum over `nbytes` (f32), `reps` times in a fori_loop.

    Each rep scales by a loop-dependent factor, so the reduction is not hoisted; it writes only a
    scalar. The floor of a kernel that reads B bytes is B / read_bandwidth().
    """
    x = _random(nbytes).reshape(-1, 4096)

    @jax.jit
    def loop(x):
        def body(i, acc):
            return acc + jnp.sum(x * (1.0 + i.astype(jnp.float32) * 1e-7))
        return jax.lax.fori_loop(0, reps, body, jnp.float32(0))

    loop(x).block_until_ready()
    seconds = best_seconds(loop, x, repeats=2)
    del x
    return nbytes * reps / seconds


class DeviceEvent(NamedTuple):
    """One profiler event: its plane ("/device:GPU:0"), line ("Stream #14(Compute)", "XLA Modules"),
    name, duration and (where known) start, in ns."""

    plane: str
    line: str
    name: str
    duration_ns: float
    start_ns: float | None = None


@dataclasses.dataclass(frozen=True)
class DeviceTimes:
    """Per call: GPU kernel us and launches by kernel name (summed over streams and GPUs, most time
    first), the "XLA Modules" line's us (None without that line) and the extent of the kernels,
    first start to last end (None without starts; with several calls it spans the host time
    between them too)."""

    kernels_us: dict[str, float]
    launches: dict[str, float]
    module_us: float | None
    extent_us: float | None

    @property
    def kernel_us(self) -> float:
        """The kernels' summed time per call (no launch gaps)."""
        return sum(self.kernels_us.values())

    @property
    def span_us(self) -> float | None:
        """The call's device span: the "XLA Modules" time where traced, else the kernels' extent."""
        return self.module_us if self.module_us is not None else self.extent_us


def aggregate_device_events(events: Iterable[tuple], calls: int) -> DeviceTimes:
    """`DeviceTimes` per call of `calls` traced calls from (plane, line, name, duration_ns[, start_ns])
    events: kernels are the events on the "Stream ..." lines of "/device:GPU" planes; the other
    lines there are derived from them (XLA Ops, ...) and only "XLA Modules" is kept."""
    us, count = collections.defaultdict(float), collections.defaultdict(int)
    module, starts, ends = None, [], []
    for e in map(lambda t: DeviceEvent(*t), events):
        if not e.plane.startswith("/device:GPU"):
            continue
        if e.line == "XLA Modules":
            module = (module or 0.0) + e.duration_ns / 1e3 / calls
        elif e.line.startswith("Stream"):
            us[e.name] += e.duration_ns / 1e3 / calls
            count[e.name] += 1
            if e.start_ns is not None:
                starts.append(e.start_ns)
                ends.append(e.start_ns + e.duration_ns)
    order = sorted(us, key=lambda n: -us[n])
    extent = (max(ends) - min(starts)) / 1e3 / calls if starts else None
    return DeviceTimes({n: us[n] for n in order}, {n: count[n] / calls for n in order}, module, extent)


def trace_device_events(fn: Callable, *args, calls: int = 20) -> list[DeviceEvent]:
    """Every event of a profiler trace of `calls` calls fn(*args), each waited for, after one
    untraced warm-up call."""
    jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(calls):
                jax.block_until_ready(fn(*args))
        (path,) = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
        return [DeviceEvent(plane.name, line.name, e.name, e.duration_ns, e.start_ns)
                for plane in data.planes for line in plane.lines for e in line.events]


def device_times(fn: Callable, *args, calls: int = 20) -> DeviceTimes:
    """`DeviceTimes` per call of fn(*args) from a profiler trace of `calls` calls."""
    return aggregate_device_events(trace_device_events(fn, *args, calls=calls), calls)


def device_event_us(fn: Callable, *args, calls: int = 20) -> dict[str, float]:
    """Device us per call of fn(*args) by GPU kernel name (most first); empty without a GPU."""
    return device_times(fn, *args, calls=calls).kernels_us


def add_decode_shape_args(parser) -> None:
    """The decode shape every decode benchmark takes: budget, sinks, window, predictor d' and I."""
    parser.add_argument("--budget", type=int, default=8192, help="tokens attended per KV head on sparse layers")
    parser.add_argument("--n-sink", type=int, default=128, help="first tokens always kept (inside the budget)")
    parser.add_argument("--n-window", type=int, default=512, help="recent tokens always kept (inside the budget)")
    parser.add_argument("--d-dash", type=int, default=16, help="TokenButler importance-key width d'")
    parser.add_argument("--intdim", type=int, default=512, help="TokenButler producer hidden size I")

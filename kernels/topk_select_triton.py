"""Exact per-row top-K selection by multi-program radix histograms: raw Triton kernels, called
from JAX through `jax_triton` (`topk_select(..., method="histogram")`).

Same semantics as `topk_select_reference`: the order-preserving int32 keys of `select_keys`
(computed in the kernels from the raw scores, never stored), "the K largest keys, ties by lower
index, INVALID never taken", indices in ascending token order, slots past the row's count
valid=False with index 0.

The unsigned view u = key ^ 0x80000000 is split into digits from the top: `bits` wide, the last
one what is left down to bit `low` (16 for bf16, whose keys have 16 significant bits; 0 for f32).
f32 with bits=8: 4 passes; bits=11: 3 (11/11/10); bf16 with bits=8: 2. Launches, each program
(row, chunk of `chunk` tokens) reading its chunk of scores once:

1. Histogram pass p = 0 .. n_pass-1 (`_hist_kernel`, grid (R, n_chunk)): every program first
   recomputes the digits of passes < p from the global histograms (`_walk`: per pass, the
   reversed cumsum of 2**bits counts and the bucket holding the k-th largest), then histograms
   (tl.histogram) digit p of its keys that match that prefix and atomically adds the histogram
   into hist[row, p]. Every key counts, invalid ones (u = 0) too, so the K-th largest always
   exists (K <= T); when it is INVALID_KEY, only the keys above it (the valid ones) are taken.
2. The last pass also stores, per program, the suffix sums of its local histogram plus the count
   of its keys above the prefix in the higher digits: loc[row, chunk, d] = #keys >= (prefix, d),
   loc[row, chunk, 2**bits] = #keys > (prefix, anything).
3. Emit (`_emit_kernel`, grid (R, n_chunk)): the full threshold th and the ties it needs from the
   histograms, the keys > th and the ties == th of the earlier chunks from loc (2 loads a chunk),
   then an in-chunk cumsum of the taken flags and a masked scatter of the token indices; each
   program also fills its share of the slots past the row's count (index 0, valid False).

hist is a zeroed [R, n_pass * 2**bits] int32 input aliased to every pass's output. The cost of
tl.histogram grows with the bins (a warp-ballot algorithm: ~bins / 32 popcounts per key and
thread), hence 8-bit digits by default.

One launch sequence (`select`) drives the kernels through a launcher: `_JaxLauncher`
(jax_triton.triton_call, CUDA GPU), `TorchLauncher` (Triton's interpreter on CPU torch tensors,
for the tests; TRITON_INTERPRET=1 before triton is imported) or `CompileLauncher` (compiles
them for a CUDA arch on any machine: `compile_for_cuda`). This module needs triton (an
ImportError naming the fix otherwise); jax_triton and torch are imported by their launchers;
butler_jax.kernels.topk_select imports this module only for method="histogram".

Launches per call: the zero fill of hist, n_pass histogram passes, the emit (f32: 6, bf16: 4).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from butler_jax.kernels._common import cdiv, next_power_of_2
from butler_jax.kernels.select_keys import FORCED_KEY, INVALID_KEY, _MAX_SCORE_KEY, _MIN_SCORE_KEY

_INSTALL = ("topk_select(method='histogram') needs triton>=3.6 and jax_triton==0.3.1: "
            "pip install 'triton>=3.6' 'jax_triton==0.3.1' (butler-jax's `gpu` extra)")
try:
    import triton
    import triton.language as tl
except ImportError as e:
    raise ImportError(_INSTALL) from e

_FORCED: tl.constexpr = tl.constexpr(int(FORCED_KEY))
_INVALID: tl.constexpr = tl.constexpr(int(INVALID_KEY))
_MAX_SCORE: tl.constexpr = tl.constexpr(int(_MAX_SCORE_KEY))
_MIN_SCORE: tl.constexpr = tl.constexpr(int(_MIN_SCORE_KEY))
_CHUNK = 4096  # tokens per program (one tl.histogram / cumsum over the whole chunk)
_BITS = 8  # digit width: tl.histogram's cost grows with its 2**bits bins
_WARPS = 4


class Plan(NamedTuple):
    """Static sizes of one call (`plan`)."""
    chunk: int  # tokens per program (a power of 2)
    n_chunk: int  # programs per row
    bits: int  # digit width (the last digit may be narrower)
    low: int  # lowest key bit resolved (16 for bf16, 0 for f32)
    n_pass: int  # histogram passes
    slots: int  # output slots each emit program fills past the row's count (a power of 2)
    warps: int  # num_warps of every kernel
    bf16: bool  # bf16 scores (else f32)


def plan(t: int, k: int, bf16: bool, *, chunk: int = _CHUNK, bits: int = _BITS,
         warps: int = _WARPS) -> Plan:
    """Sizes for rows of T tokens, K selected; chunk, bits and warps may be overridden (chunk a
    power of 2, 1 <= bits <= 16; on a GPU bits <= 12: tl.histogram keeps 2**bits / 32 counts per
    thread and 2**bits in shared memory)."""
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of 2, got {chunk}")
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in [1, 16] (tl.histogram bins = 2**bits), got {bits}")
    chunk = min(chunk, next_power_of_2(t))
    n_chunk = cdiv(t, chunk)
    low = 16 if bf16 else 0
    return Plan(chunk=chunk, n_chunk=n_chunk, bits=bits, low=low, n_pass=cdiv(32 - low, bits),
                slots=next_power_of_2(cdiv(k, n_chunk)), warps=warps, bf16=bf16)


# ----------------------------------------------------------------------------- Triton kernels


@triton.jit
def _chunk_keys(s_ptr, len_ptr, row, T: tl.constexpr, N_SINK: tl.constexpr,
                N_RECENT: tl.constexpr, CHUNK: tl.constexpr, BF16: tl.constexpr):
    """Positions [CHUNK] of program (row, chunk) and their `select_keys` keys (int32); positions
    >= T (the last chunk's padding) get INVALID, like tokens at t >= length."""
    pos = tl.program_id(1) * CHUNK + tl.arange(0, CHUNK)
    length = tl.load(len_ptr + row)
    inside = (pos < length) & (pos < T)
    x = tl.load(s_ptr + row.to(tl.int64) * T + pos, mask=inside, other=0.0).to(tl.float32)
    bits = x.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    if BF16:
        key = key & -65536  # negatives flipped their zero low half; clear it again
    key = tl.minimum(tl.maximum(key, _MIN_SCORE), _MAX_SCORE)
    forced = (pos < N_SINK) | (pos >= length - N_RECENT)
    key = tl.where(forced, _FORCED, key)
    return pos, tl.where(inside, key, _INVALID)


@triton.jit
def _unsigned(key):
    """Order-preserving uint32 view of int32 keys (INVALID -> 0)."""
    return (key ^ _INVALID).to(tl.uint32, bitcast=True)


@triton.jit
def _walk(h_ptr, K: tl.constexpr, N: tl.constexpr, BITS: tl.constexpr, LOW: tl.constexpr,
          N_PASS: tl.constexpr):
    """The first N digits of the K-th largest key of a row from its histograms h_ptr
    [N_PASS, 2**BITS]. -> (prefix: uint32 with those digits in place, ties: how many keys
    equal to the prefix in those digits are still needed)."""
    bins = tl.arange(0, 1 << BITS)
    prefix = tl.zeros((), tl.uint32)
    need = tl.full((), K, tl.int32)
    for q in tl.static_range(N):
        h = tl.load(h_ptr + q * (1 << BITS) + bins)
        ge = tl.cumsum(h, axis=0, reverse=True)  # keys with digit >= d (matching the prefix)
        digit = tl.sum((ge >= need).to(tl.int32), axis=0) - 1  # ge falls with d; ge[0] >= need
        need = need - tl.sum(tl.where(bins > digit, h, 0), axis=0)
        prefix = prefix | (digit.to(tl.uint32) << (LOW if q == N_PASS - 1 else 32 - BITS * (q + 1)))
    return prefix, need


@triton.jit
def _hist_kernel(s_ptr, len_ptr, h_ptr, h_out_ptr, loc_ptr, T: tl.constexpr, K: tl.constexpr,
                 N_SINK: tl.constexpr, N_RECENT: tl.constexpr, CHUNK: tl.constexpr,
                 BF16: tl.constexpr, BITS: tl.constexpr, LOW: tl.constexpr,
                 N_PASS: tl.constexpr, PASS: tl.constexpr):
    """Program (row, chunk) of histogram pass PASS: digit PASS of the chunk's keys matching the
    prefix of passes < PASS, atomically added to h_out_ptr [R, N_PASS, 2**BITS] (= h_ptr,
    aliased). The last pass also writes loc_ptr [R, n_chunk, 2**BITS + 1] (module docstring);
    the others get a 1-element placeholder."""
    row = tl.program_id(0)
    nb: tl.constexpr = 1 << BITS
    last: tl.constexpr = PASS == N_PASS - 1
    shift: tl.constexpr = LOW if last else 32 - BITS * (PASS + 1)
    high: tl.constexpr = 32 - BITS * PASS  # the bits above this digit were resolved before
    _, key = _chunk_keys(s_ptr, len_ptr, row, T, N_SINK, N_RECENT, CHUNK, BF16)
    u = _unsigned(key)
    digit = ((u >> shift) & (nb - 1)).to(tl.int32)
    if PASS == 0:
        h = tl.histogram(digit, nb)
    else:
        prefix, _ = _walk(h_ptr + row * (N_PASS * nb), K, PASS, BITS, LOW, N_PASS)
        match = (u >> high) == (prefix >> high)
        if tl.sum(match.to(tl.int32), axis=0) > 0:  # late passes: most chunks match no key
            h = tl.histogram(digit, nb, mask=match)
        else:
            h = tl.zeros((nb,), tl.int32)
    bins = tl.arange(0, nb)
    tl.atomic_add(h_out_ptr + row * (N_PASS * nb) + PASS * nb + bins, h, mask=h != 0)
    if last:
        if PASS == 0:
            above = tl.zeros((), tl.int32)
        else:
            above = tl.sum(((u >> high) > (prefix >> high)).to(tl.int32), axis=0)
        loc = loc_ptr + (row * tl.num_programs(1) + tl.program_id(1)) * (nb + 1)
        tl.store(loc + bins, above + tl.cumsum(h, axis=0, reverse=True))
        tl.store(loc + nb, above)


@triton.jit
def _emit_kernel(s_ptr, len_ptr, h_ptr, loc_ptr, idx_ptr, valid_ptr, T: tl.constexpr,
                 K: tl.constexpr, N_SINK: tl.constexpr, N_RECENT: tl.constexpr,
                 CHUNK: tl.constexpr, BF16: tl.constexpr, BITS: tl.constexpr,
                 LOW: tl.constexpr, N_PASS: tl.constexpr, N_CHUNK_P2: tl.constexpr,
                 SLOTS: tl.constexpr):
    """Program (row, chunk): scatter the chunk's taken token indices to idx_ptr [R, K] and fill
    slots [chunk * SLOTS, (chunk + 1) * SLOTS) past the row's count (index 0); valid_ptr [R, K]."""
    row = tl.program_id(0)
    c = tl.program_id(1)
    nb: tl.constexpr = 1 << BITS
    prefix, need = _walk(h_ptr + row * (N_PASS * nb), K, N_PASS, BITS, LOW, N_PASS)
    th = (prefix.to(tl.int32, bitcast=True)) ^ _INVALID
    th_valid = th != _INVALID  # an INVALID threshold: take the keys above it, no ties
    d = ((prefix >> LOW) & (nb - 1)).to(tl.int32)
    before = tl.arange(0, N_CHUNK_P2)
    loc = loc_ptr + (row * tl.num_programs(1) + before) * (nb + 1) + d
    above = tl.load(loc + 1, mask=before < c, other=0)  # keys > th per earlier chunk
    ties = tl.load(loc, mask=before < c, other=0) - above  # keys == th per earlier chunk
    ties_before = tl.sum(ties, axis=0)
    taken_before = tl.sum(above, axis=0) + tl.where(th_valid, tl.minimum(ties_before, need), 0)
    pos, key = _chunk_keys(s_ptr, len_ptr, row, T, N_SINK, N_RECENT, CHUNK, BF16)
    tie = (key == th) & th_valid
    rank = ties_before + tl.cumsum(tie.to(tl.int32), axis=0)  # 1-based among the row's ties
    take = (key > th) | (tie & (rank <= need))
    slot = taken_before + tl.cumsum(take.to(tl.int32), axis=0) - 1
    out = row.to(tl.int64) * K
    tl.store(idx_ptr + out + slot, pos, mask=take)
    count = K - need + tl.where(th_valid, need, 0)
    j = c * SLOTS + tl.arange(0, SLOTS)
    tl.store(idx_ptr + out + j, tl.zeros((SLOTS,), tl.int32), mask=(j >= count) & (j < K))
    tl.store(valid_ptr + out + j, j < count, mask=j < K)


# ----------------------------------------------------------------------------- launch sequence


class Launcher(Protocol):
    """Runs the Triton kernels on some arrays (jax or torch)."""

    def zeros(self, shape: tuple[int, ...]) -> Any:
        """A zeroed int32 array."""

    def __call__(self, kernel, grid: tuple[int, int], args: Sequence[Any],
                 outs: Sequence[tuple[tuple[int, ...], Any]], aliases: dict[int, int],
                 num_warps: int, **meta) -> list[Any]:
        """kernel[grid](*args, *outputs, **meta); outs: (shape, numpy dtype) per output;
        aliases: {argument index: output index} (that output is the argument's buffer)."""


def select(launch: Launcher, scores, lengths, k: int, *, n_sink: int, n_recent: int,
           sizes: Plan) -> tuple[Any, Any]:
    """The launch sequence: n_pass histogram passes and the emit.

    scores [R, T] f32 / bf16, lengths [R] int32 (jax or torch, as `launch` takes them).
    -> (indices [R, K] int32, valid [R, K] bool)."""
    r, t = scores.shape
    grid = (r, sizes.n_chunk)
    meta = dict(T=t, K=k, N_SINK=n_sink, N_RECENT=n_recent, CHUNK=sizes.chunk, BF16=sizes.bf16,
                BITS=sizes.bits, LOW=sizes.low, N_PASS=sizes.n_pass)
    nb = 1 << sizes.bits
    hist = launch.zeros((r, sizes.n_pass * nb))
    for i in range(sizes.n_pass):
        last = i == sizes.n_pass - 1
        loc_shape = (r, sizes.n_chunk * (nb + 1)) if last else (1,)
        hist, loc = launch(_hist_kernel, grid, [scores, lengths, hist],
                           [((r, sizes.n_pass * nb), np.int32), (loc_shape, np.int32)],
                           {2: 0}, sizes.warps, PASS=i, **meta)
    idx, valid = launch(_emit_kernel, grid, [scores, lengths, hist, loc],
                        [((r, k), np.int32), ((r, k), np.bool_)], {}, sizes.warps,
                        N_CHUNK_P2=next_power_of_2(sizes.n_chunk), SLOTS=sizes.slots,
                        **meta)
    return idx, valid


class _JaxLauncher:
    """jax_triton.triton_call on jax arrays (CUDA GPU)."""

    def __init__(self) -> None:
        try:
            import jax_triton
        except ImportError as e:  # missing, or a JAX without GPU support
            raise ImportError(f"{_INSTALL}; importing jax_triton failed: {e}") from e
        self._call = jax_triton.triton_call

    def zeros(self, shape: tuple[int, ...]):
        return jnp.zeros(shape, jnp.int32)

    def __call__(self, kernel, grid, args, outs, aliases, num_warps, **meta):
        return self._call(*args, kernel=kernel, grid=grid, num_warps=num_warps, num_stages=1,
                          out_shape=[jax.ShapeDtypeStruct(s, d) for s, d in outs],
                          input_output_aliases=aliases, **meta)


def histogram_select(scores, lengths, k: int, *, n_sink: int, n_recent: int, **overrides):
    """JAX entry point (call inside jit; shapes are static): scores [R, T] f32 / bf16, lengths
    [R] int32 -> (indices [R, K] int32, valid [R, K] bool). overrides: `plan`'s chunk / bits / warps."""
    sizes = plan(scores.shape[1], k, scores.dtype == jnp.bfloat16, **overrides)
    return select(_JaxLauncher(), scores, lengths, k, n_sink=n_sink, n_recent=n_recent, sizes=sizes)


class CompileLauncher:
    """Compiles each kernel of the launch sequence for a CUDA arch without running it (no GPU
    needed: Triton's bundled ptxas); arrays are jax.ShapeDtypeStruct. `compiled`: the kernels."""

    def __init__(self, arch: int = 90) -> None:
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", arch, 32)
        self.compiled: list = []

    def zeros(self, shape: tuple[int, ...]):
        return jax.ShapeDtypeStruct(shape, np.int32)

    def __call__(self, kernel, grid, args, outs, aliases, num_warps, **meta):
        from triton.compiler import ASTSource
        outs = [jax.ShapeDtypeStruct(s, d) for s, d in outs]
        sig = {name: "*" + _POINTER[np.dtype(a.dtype).name]
               for name, a in zip(kernel.arg_names, [*args, *outs])}
        src = ASTSource(kernel, {**sig, **{name: "constexpr" for name in meta}}, meta)
        self.compiled.append(triton.compile(src, target=self.target,
                                            options={"num_warps": num_warps}))
        return outs


_POINTER = {"float32": "fp32", "bfloat16": "bf16", "int32": "i32", "bool": "i1"}


def compile_for_cuda(rows: int, t: int, k: int, dtype, *, arch: int = 90, n_sink: int = 0,
                     n_recent: int = 0, **overrides) -> list:
    """Compile the kernels of one call for sm_`arch` on any machine -> Triton CompiledKernels
    (cubin, metadata: shared memory, ...). overrides: `plan`'s."""
    bf16 = jnp.dtype(dtype) == jnp.bfloat16
    launch = CompileLauncher(arch)
    select(launch, jax.ShapeDtypeStruct((rows, t), dtype), jax.ShapeDtypeStruct((rows,), np.int32),
           k, n_sink=n_sink, n_recent=n_recent, sizes=plan(t, k, bf16, **overrides))
    return launch.compiled


# ----------------------------------------------------------------------------- interpreter


class TorchLauncher:
    """Triton's interpreter on CPU torch tensors (the tests): TRITON_INTERPRET=1 must be set
    before triton is imported (tests/conftest.py does so where JAX sees no GPU)."""

    def __init__(self) -> None:
        if not triton.knobs.runtime.interpret:
            raise RuntimeError("TorchLauncher runs the kernels in Triton's interpreter: set "
                               "TRITON_INTERPRET=1 before anything imports triton")

    def zeros(self, shape: tuple[int, ...]):
        import torch
        return torch.zeros(shape, dtype=torch.int32)

    def __call__(self, kernel, grid, args, outs, aliases, num_warps, **meta):
        import torch
        dtypes = {np.dtype(np.int32): torch.int32, np.dtype(np.bool_): torch.bool}
        aliased = {o: a for a, o in aliases.items()}
        out = [args[aliased[i]] if i in aliased else torch.empty(s, dtype=dtypes[np.dtype(d)])
               for i, (s, d) in enumerate(outs)]
        kernel[grid](*args, *out, **meta)
        return out

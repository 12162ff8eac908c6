"""The systolic array's contract in Python: what it computes, how its streams are packed, when
each result leaves.

- ``reference``: the exact result of one mode's matrix product as the PEs compute it: products
  from the formats' own decoders (``qaccel.formats``), summed ``lanes`` at a time (one PE step),
  each step added with saturation at the mode's accumulator width, in k order. MX modes: each
  block's exact sum, shifted by its combined scale exponent into the window (``qaccel.modes``),
  added with saturation block by block.
- ``ws_beats`` / ``os_beats``: the stream beats (flat payload integers, as the Verilog ports see
  them) that run a product on the array, and the results expected on ``o``.
- ``ws_latency`` / ``os_latency``: the cycle contract (see ``hw.array``):
  weight-stationary, the result of the ``a`` beat accepted in cycle t leaves in cycle
  t + rows + cols + s; output-stationary, row r of the tile whose last step was accepted in cycle
  t leaves in cycle t + rows + cols + 1 + s + r; s (``stages``) is ``hw.pe.Datapath.stages``.
- ``ws_copy_cycles``: weight-stationary, how long after a tile's first ``a`` beat the next
  tile's weights may overwrite the PEs' shadow weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qaccel.modes import BusWidths, ModeSpec, pack_lanes

__all__ = [
    "Beats",
    "check_run",
    "os_beats",
    "os_latency",
    "random_scales",
    "random_tile",
    "reference",
    "unpack_output",
    "ws_beats",
    "ws_copy_cycles",
    "ws_latency",
]


def ws_latency(rows: int, cols: int, stages: int = 0) -> int:
    """Cycles from an accepted ``a`` beat to its ``o`` beat, weight-stationary; ``stages``:
    the PEs' pipeline registers (``hw.pe.Datapath.stages``)."""
    return rows + cols + stages


def ws_copy_cycles(rows: int) -> int:
    """Weight-stationary: cycles after a tile's first ``a`` beat is accepted until the next
    tile's last ``w`` beat may overwrite the PEs' shadow weights (``hw.array``); 0: in the cycle
    of that ``a`` beat itself."""
    return max(rows - 2, 0)


def os_latency(rows: int, cols: int, row: int = 0, stages: int = 0) -> int:
    """Cycles from a tile's accepted last step to its result row ``row``, output-stationary."""
    return rows + cols + 1 + stages + row


def _values(fmt, codes) -> np.ndarray:
    """Decoded values, NaN for every special code (NaN, inf, NaR)."""
    values = fmt.decode(np.asarray(codes, dtype=np.int64))
    return np.where(np.isfinite(values), values, np.nan)


def reference(
    spec: ModeSpec, w_codes, a_codes, w_scales=None, a_scales=None
) -> tuple[np.ndarray, np.ndarray]:
    """C = A @ W for codes A (M x K) and W (K x N) in mode ``spec``; MX modes also take the
    E8M0 scale codes of W's blocks (ceil(K / block) x N) and of A's (M x ceil(K / block)).

    Returns (values, invalid): values in accumulator units (2**-spec.frac_bits), Python ints in
    an object array; invalid where a special operand joined the sum (its value then holds the
    sum of the finite products) or, in MX modes, where a block could not join (a NaN scale, or
    a nonzero block sum whose scale exponent is outside the window: it adds nothing)."""
    if spec.block:
        return _mx_reference(spec, w_codes, a_codes, w_scales, a_scales)
    if w_scales is not None or a_scales is not None:
        raise ValueError(f"{spec.name} has no block scales")
    products, invalid = _exact_products(spec, w_codes, a_codes, spec.frac_bits)
    m, k, n = products.shape
    if k % spec.lanes:
        raise ValueError(f"K = {k} is not a multiple of {spec.lanes} lanes")
    steps = products.reshape(m, k // spec.lanes, spec.lanes, n)
    low, high = spec.acc_range
    acc = np.zeros((m, n), dtype=object)
    for s in range(steps.shape[1]):
        acc = np.clip(acc + steps[:, s].sum(axis=1), low, high)
    return acc, invalid


def _exact_products(spec: ModeSpec, w_codes, a_codes, frac_bits: int):
    """(M x K x N products in units of 2**-frac_bits, M x N invalid flags). Python ints: float
    accumulators can be wider than 64 bits."""
    w = _values(spec.weight, w_codes)
    a = _values(spec.activation, a_codes)
    if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[0]:
        raise ValueError(f"cannot multiply {a.shape} by {w.shape}")
    products = a[:, :, None] * w[None, :, :]  # exact in float64 for <= 8-bit codes
    invalid = np.isnan(products).any(axis=1)
    scaled = np.where(np.isnan(products), 0.0, products) * 2.0**frac_bits
    if not np.array_equal(scaled, np.round(scaled)):
        raise AssertionError(f"{spec.name}: products are not exact in the accumulator")
    return np.frompyfunc(int, 1, 1)(scaled), invalid


def _mx_reference(spec: ModeSpec, w_codes, a_codes, w_scales, a_scales):
    lo, hi = spec.scale_range
    products, invalid = _exact_products(spec, w_codes, a_codes, spec.frac_bits + lo)
    m, k, n = products.shape
    blocks = -(-k // spec.block)
    w_scales, a_scales = _check_scales(spec, k, n, m, w_scales, a_scales)
    low, high = spec.acc_range
    acc = np.zeros((m, n), dtype=object)
    invalid = invalid.copy()
    for b in range(blocks):
        block_sums = products[:, b * spec.block : (b + 1) * spec.block].sum(axis=1)
        for i in range(m):
            for j in range(n):
                sa, sw, total = int(a_scales[i, b]), int(w_scales[b, j]), block_sums[i, j]
                exponent = sa + sw - 254
                if 0xFF in (sa, sw) or (total != 0 and not lo <= exponent <= hi):
                    invalid[i, j] = True
                if 0xFF in (sa, sw) or total == 0 or not lo <= exponent <= hi:
                    continue  # nothing to add
                acc[i, j] = min(max(acc[i, j] + (total << (exponent - lo)), low), high)
    return acc, invalid


def _check_scales(spec: ModeSpec, k: int, n: int, m: int, w_scales, a_scales):
    blocks = -(-k // spec.block)
    if w_scales is None or a_scales is None:
        raise ValueError(f"{spec.name} needs the block scales of W and A")
    w_scales, a_scales = np.asarray(w_scales, dtype=np.int64), np.asarray(a_scales, dtype=np.int64)
    if w_scales.shape != (blocks, n) or a_scales.shape != (m, blocks):
        raise ValueError(
            f"{spec.name} with K={k}: W scales must be {blocks}x{n} and A scales {m}x{blocks}, "
            f"not {w_scales.shape} and {a_scales.shape}"
        )
    for scales in (w_scales, a_scales):
        if scales.size and (scales.min() < 0 or scales.max() > 0xFF):
            raise ValueError("E8M0 scale codes are 0..255")
    return w_scales, a_scales


def random_scales(spec: ModeSpec, rng: np.random.Generator, m: int, k: int, n: int):
    """Random E8M0 codes (W: ceil(k / block) x n, A: m x ceil(k / block)) whose combined
    exponents all lie in the mode's scale window."""
    lo, hi = spec.scale_range
    blocks = -(-k // spec.block)
    half = (-(-lo // 2), hi // 2)  # each side's exponent in half the window
    w = rng.integers(half[0], half[1] + 1, (blocks, n)) + 127
    a = rng.integers(half[0], half[1] + 1, (m, blocks)) + 127
    return w, a


def random_tile(spec: ModeSpec, rng: np.random.Generator, m: int, k: int, n: int):
    """Random finite codes (W: k x n, A: m x k) for one product in mode ``spec``."""
    w = rng.choice(spec.weight.finite_codes(), (k, n))
    a = rng.choice(spec.activation.finite_codes(), (m, k))
    return w, a


@dataclass
class Beats:
    """One run on the array: input beats (flat payloads) and the expected ``o`` beats."""

    os: bool
    w: list[int] = field(default_factory=list)
    a: list[int] = field(default_factory=list)
    expected: list[tuple[list[int], list[int]]] = field(default_factory=list)  # values, invalid
    # for each o beat: the index of the a beat whose acceptance fixes its cycle, and the delay
    timing: list[tuple[int, int]] = field(default_factory=list)

    def extend(self, other: Beats) -> Beats:
        base = len(self.a)
        self.w += other.w
        self.a += other.a
        self.expected += other.expected
        self.timing += [(i + base, d) for i, d in other.timing]
        return self


def _flat(elements, bits: int) -> int:
    return sum((int(e) & ((1 << bits) - 1)) << (i * bits) for i, e in enumerate(elements))


def _w_payload(bus: BusWidths, words, mode: int, cols: int, scales=()) -> int:
    payload = _flat(words, bus.w_word_bits) | mode << (cols * bus.w_word_bits)
    if bus.scale_bits:
        payload |= _flat(scales, bus.scale_bits) << (cols * bus.w_word_bits + bus.mode_bits)
    return payload


def _a_payload(bus: BusWidths, words, last: bool, rows: int, scales=()) -> int:
    payload = _flat(words, bus.a_word_bits) | int(last) << (rows * bus.a_word_bits)
    if bus.scale_bits:
        payload |= _flat(scales, bus.scale_bits) << (rows * bus.a_word_bits + 1)
    return payload


def _expect(beats: Beats, spec: ModeSpec, w_codes, a_codes, w_scales=None, a_scales=None):
    values, invalid = reference(spec, w_codes, a_codes, w_scales, a_scales)
    for row_v, row_i in zip(values, invalid, strict=True):
        beats.expected.append(([int(v) for v in row_v], [int(i) for i in row_i]))


def ws_beats(
    bus: BusWidths,
    rows: int,
    cols: int,
    mode: int,
    spec: ModeSpec,
    w_codes,
    a_codes,
    *,
    stages: int = 0,
) -> Beats:
    """Weight-stationary: W (lanes*rows x cols) into a bank, then one ``a`` beat per row of A;
    ``stages``: the PEs' pipeline registers (the results' timing)."""
    if spec.block:
        raise ValueError(f"{spec.name} is an MX mode: it runs output-stationary only")
    w_codes, a_codes = np.asarray(w_codes), np.asarray(a_codes)
    k = spec.lanes * rows
    if w_codes.shape != (k, cols) or a_codes.ndim != 2 or a_codes.shape[1] != k:
        raise ValueError(
            f"weight-stationary needs W {k}x{cols} and A Mx{k}, "
            f"not {w_codes.shape} and {a_codes.shape}"
        )
    beats = Beats(os=False)
    w_words = pack_lanes(w_codes.T, spec.lanes, spec.w_code_bits).T  # rows x cols
    for i in range(rows):
        beats.w.append(_w_payload(bus, w_words[rows - 1 - i], mode, cols))
    a_words = pack_lanes(a_codes, spec.lanes, spec.a_code_bits)  # M x rows
    for i, words in enumerate(a_words):
        beats.a.append(_a_payload(bus, words, i == len(a_words) - 1, rows))
        beats.timing.append((i, ws_latency(rows, cols, stages)))
    _expect(beats, spec, w_codes, a_codes)
    return beats


def os_beats(
    bus: BusWidths,
    rows: int,
    cols: int,
    mode: int,
    spec: ModeSpec,
    w_codes,
    a_codes,
    w_scales=None,
    a_scales=None,
    *,
    stages: int = 0,
) -> Beats:
    """Output-stationary: one tile, A (rows x K) and W (K x cols), K a multiple of lanes; MX
    modes also take the block scales (see ``reference``); ``stages`` as for ``ws_beats``."""
    w_codes, a_codes = np.asarray(w_codes), np.asarray(a_codes)
    if (
        a_codes.ndim != 2
        or a_codes.shape[0] != rows
        or a_codes.shape[1] % spec.lanes
        or w_codes.shape != (a_codes.shape[1], cols)
    ):
        raise ValueError(
            f"output-stationary needs A {rows}xK and W Kx{cols} with K a multiple "
            f"of {spec.lanes}, not {a_codes.shape} and {w_codes.shape}"
        )
    beats = Beats(os=True)
    w_words = pack_lanes(w_codes.T, spec.lanes, spec.w_code_bits).T  # steps x cols
    a_words = pack_lanes(a_codes, spec.lanes, spec.a_code_bits).T  # steps x rows
    steps = len(a_words)
    w_step_scales = a_step_scales = np.zeros((steps, 0), dtype=np.int64)
    if spec.block:
        w_scales, a_scales = _check_scales(spec, steps, cols, rows, w_scales, a_scales)
        block_of = np.arange(steps) // spec.block
        w_step_scales, a_step_scales = w_scales[block_of], a_scales.T[block_of]
    for s in range(steps):
        beats.w.append(_w_payload(bus, w_words[s], mode, cols, w_step_scales[s]))
        beats.a.append(_a_payload(bus, a_words[s], s == steps - 1, rows, a_step_scales[s]))
    beats.timing = [(steps - 1, os_latency(rows, cols, r, stages)) for r in range(rows)]
    _expect(beats, spec, w_codes, a_codes, w_scales, a_scales)
    return beats


def unpack_output(payload: int, acc_width: int, cols: int) -> tuple[list[int], list[int]]:
    """An ``o`` payload (``acc_width`` bits per column) as (signed values, invalid flags)."""
    bits = acc_width
    values = []
    for c in range(cols):
        v = (payload >> (c * bits)) & ((1 << bits) - 1)
        values.append(v - (1 << bits) if v >> (bits - 1) else v)
    flags = payload >> (cols * bits)
    return values, [(flags >> c) & 1 for c in range(cols)]


def check_run(
    beats: Beats, a_cycles: list[int], outputs: list[tuple[int, list[int], list[int]]]
) -> None:
    """Raise AssertionError unless a run matches the contract: every expected ``o`` beat, in
    order, bit-exact, in the cycle the latency formula gives. ``a_cycles``: the cycle each
    ``a`` beat was accepted; ``outputs``: (cycle, values, invalid) of every ``o`` beat."""
    if len(outputs) != len(beats.expected):
        raise AssertionError(f"{len(outputs)} output beats, expected {len(beats.expected)}")
    for i, ((cycle, values, invalid), (want_v, want_i), (a_index, delay)) in enumerate(
        zip(outputs, beats.expected, beats.timing, strict=True)
    ):
        if values != want_v or invalid != want_i:
            raise AssertionError(
                f"output beat {i}: got {values} invalid {invalid}, "
                f"expected {want_v} invalid {want_i}"
            )
        want_cycle = a_cycles[a_index] + delay
        if cycle != want_cycle:
            raise AssertionError(
                f"output beat {i} left in cycle {cycle}, the latency formula "
                f"says {want_cycle} (a beat {a_index} + {delay})"
            )

"""The LUT tensor core's algorithm in numpy: table lookup low-bit GEMM, exact, in the order the
hardware computes it.

**Bit planes.** A weight code of k bits (``formats`` binary, intk, uintk, ternary) is read as
bit planes q_b in {0, 1}; its value is w = sum_b c_b * q_b - z with plane coefficients c_b and
offset z fixed by the format (``LutWeight``):

- uintk: c_b = 2**b, z = 0; intk (two's complement): the same but c_(k-1) = -2**(k-1);
- ternary: its 2-bit code read as int2 (0 -> 0, 1 -> +1, 3 -> -1; code 2 is not a value and
  reads -2, as in ``hw.operands``);
- binary (W1): w = 2q - 1 in {-1, +1}: c_0 = 2, z = 1.

**Offset binary.** Read each plane bit as s = 2q - 1 in {-1, +1}. For a group of g activations
a_j, the symmetrized table holds T[idx] = sum_j (bit_j(idx) ? +a_j : -a_j); only the 2**(g-1)
entries with the top index bit clear are stored, because T[idx ^ (2**g - 1)] = -T[idx]. With
S = sum_j a_j and q = (s + 1) / 2:

    sum_j a_j w_j = sum_b c_b sum_j a_j q_bj - z S
                  = 1/2 sum_b c_b T[idx_b] + 1/2 (sum_b c_b) S - z S

so 2 * (W . A) = sum_b c_b T[idx_b] + (C - 2z) S with C = sum_b c_b: an integer identity, no
rounding anywhere. The core accumulates sum_b c_b T[idx_b] (one plane per cycle, shifted by
its bit position, the top plane of a signed format subtracted), adds the correction (C - 2z) S
once per tile (S comes free from the table: S = -T[0]), and halves: the sum is even, so the
halving is exact. C - 2z is 2**k - 1 for uintk, -1 for intk and ternary, 0 for binary.

Other zero points (asymmetric uintk weights, w = q - z) are not the core's: A (Wq - z) =
A Wq - z sum(A), and the second term is a per-output correction for the output stage. Table
quantization (T-MAC's optional lossy mode) is not implemented: tables are always exact.

Widths: table entries need 8 + ceil(log2 g) + 1 bits for 8-bit activations; the plane
accumulator holds ``acc_bits + 3`` bits (2 * dot less the correction) and saturates; the
result saturates at ``acc_bits``. K is padded with zero activations to whole groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qaccel import formats

__all__ = [
    "LutBeats",
    "LutWeight",
    "check_lut_run",
    "lookup",
    "lut_beats",
    "lut_weight",
    "plane_acc_bits",
    "reference",
    "tables",
]

LUT_WEIGHT_FORMATS = ("binary", "ternary", *(f"{s}int{k}" for k in (2, 3, 4) for s in ("", "u")))


@dataclass(frozen=True)
class LutWeight:
    """A weight format as bit planes: value = sum_b coefficients[b] * bit_b(code) - offset."""

    fmt: formats.NumberFormat
    coefficients: tuple[int, ...]
    offset: int

    @property
    def planes(self) -> int:
        return len(self.coefficients)

    @property
    def correction(self) -> int:
        """C - 2z: how many S the plane sum lacks (see the module docstring)."""
        return sum(self.coefficients) - 2 * self.offset

    def values(self, codes) -> np.ndarray:
        """Weight values from codes, by the plane definition (int64)."""
        codes = np.asarray(codes, dtype=np.int64)
        out = -self.offset * np.ones_like(codes)
        for b, c in enumerate(self.coefficients):
            out += c * ((codes >> b) & 1)
        return out


def lut_weight(name: str) -> LutWeight:
    """The plane reading of weight format ``name`` (one of ``LUT_WEIGHT_FORMATS``)."""
    if name not in LUT_WEIGHT_FORMATS:
        raise ValueError(
            f"the LUT core takes {', '.join(LUT_WEIGHT_FORMATS)} weights, not {name!r}"
        )
    fmt = formats.get_format(name)
    if name == "binary":
        return LutWeight(fmt, (2,), 1)
    bits = fmt.bits
    coefficients = [1 << b for b in range(bits)]
    if name == "ternary" or fmt.signed:
        coefficients[-1] = -coefficients[-1]
    return LutWeight(fmt, tuple(coefficients), 0)


def tables(a_codes, fmt: formats.NumberFormat, group: int) -> np.ndarray:
    """The stored half of every group's table: (M, K/group, 2**(group-1)) int64, for
    activation codes (M x K, K a multiple of ``group``) of integer format ``fmt``."""
    a = fmt.decode(np.asarray(a_codes, dtype=np.int64)).astype(np.int64)
    m, k = a.shape
    if k % group:
        raise ValueError(f"K = {k} is not a multiple of the group size {group}")
    groups = a.reshape(m, k // group, group)
    idx = np.arange(1 << (group - 1))
    signs = np.where((idx[:, None] >> np.arange(group)) & 1, 1, -1)  # entries x group
    return np.einsum("mgj,ej->mge", groups, signs)


def lookup(table, idx, group: int):
    """T[idx] for any g-bit index from the stored half: the top bit set means -T[~idx]."""
    idx = np.asarray(idx, dtype=np.int64)
    top = (idx >> (group - 1)) & 1
    low = np.where(top, ~idx, idx) & ((1 << (group - 1)) - 1)
    entry = np.take_along_axis(np.asarray(table), low, axis=-1)
    return np.where(top, -entry, entry)


def plane_acc_bits(acc_bits: int) -> int:
    return acc_bits + 3


def _sat(x: int, bits: int) -> int:
    return min(max(x, -(1 << (bits - 1))), (1 << (bits - 1)) - 1)


def reference(
    weight: LutWeight,
    w_codes,
    a_codes,
    *,
    activation: str = "int8",
    group: int = 4,
    acc_bits: int = 32,
) -> np.ndarray:
    """C = A @ W (A: M x K activation codes, W: K x N weight codes) by the LUT algorithm:
    group by group, plane by plane, saturating as the core does. Returns int64 M x N."""
    a_fmt = formats.get_format(activation)
    w_codes, a_codes = np.asarray(w_codes, dtype=np.int64), np.asarray(a_codes, dtype=np.int64)
    (m, k), (k2, n) = a_codes.shape, w_codes.shape
    if k != k2:
        raise ValueError(f"cannot multiply A {a_codes.shape} by W {w_codes.shape}")
    pad = -k % group  # zero activations: they add nothing whatever the weight bits
    a_codes = np.pad(a_codes, ((0, 0), (0, pad)))
    w_codes = np.pad(w_codes, ((0, pad), (0, 0)))
    t = tables(a_codes, a_fmt, group)  # M x G x E
    wide = plane_acc_bits(acc_bits)
    total = [0] * m  # S per row, group by group: T[0] = -sum of the group
    for i in range(m):
        for g in range(t.shape[1]):
            total[i] = _sat(total[i] - int(t[i, g, 0]), wide)
    bit_weights = 1 << np.arange(group)
    acc = np.zeros((m, n), dtype=object)
    for g in range(t.shape[1]):
        codes = w_codes[g * group : (g + 1) * group]  # group x N
        for b, c in enumerate(weight.coefficients):
            idx = (((codes >> b) & 1) * bit_weights[:, None]).sum(axis=0)  # N
            looked = lookup(t[:, g, None, :], np.broadcast_to(idx[None, :, None], (m, n, 1)), group)
            for i in range(m):
                for j in range(n):
                    acc[i, j] = _sat(acc[i, j] + c * int(looked[i, j, 0]), wide)
    out = np.zeros((m, n), dtype=np.int64)
    for i in range(m):
        for j in range(n):
            out[i, j] = _sat((acc[i, j] + weight.correction * int(total[i])) >> 1, acc_bits)
    return out


# --- stream beats and the cycle contract ----------------------------------------------------


@dataclass
class LutBeats:
    """One run on the LUT core: ``a`` and ``w`` beats (flat payloads) and the expected rows."""

    a: list[int] = field(default_factory=list)
    w: list[int] = field(default_factory=list)
    expected: list[list[int]] = field(default_factory=list)
    # per output row: the index of the w beat whose acceptance fixes its cycle, and the delay
    timing: list[tuple[int, int]] = field(default_factory=list)

    def extend(self, other: LutBeats) -> LutBeats:
        base = len(self.w)
        self.a += other.a
        self.w += other.w
        self.expected += other.expected
        self.timing += [(i + base, d) for i, d in other.timing]
        return self


def lut_beats(core, mode: int, w_codes, a_codes) -> LutBeats:
    """The beats of one tile on ``core`` (a ``hw.lut_core.LutCore`` or anything with its
    geometry): W (K x tile_n) codes of ``core.modes[mode]``, A (tile_m x K) codes."""
    weight = core.modes[mode]
    g, rows, cols = core.group, core.tile_m, core.tile_n
    w_codes, a_codes = np.asarray(w_codes, dtype=np.int64), np.asarray(a_codes, dtype=np.int64)
    if a_codes.ndim != 2 or a_codes.shape[0] != rows or w_codes.shape != (a_codes.shape[1], cols):
        raise ValueError(
            f"the LUT core takes A {rows}xK and W Kx{cols}, not {a_codes.shape} and {w_codes.shape}"
        )
    k = a_codes.shape[1]
    pad = -k % g
    a_pad = np.pad(a_codes, ((0, 0), (0, pad)))
    w_pad = np.pad(w_codes, ((0, pad), (0, 0)))
    groups = a_pad.shape[1] // g
    beats = LutBeats()
    a_bits, w_bits = rows * g * 8, cols * g
    for i in range(groups):
        acts = a_pad[:, i * g : (i + 1) * g] & 0xFF
        payload = sum(int(v) << (8 * n) for n, v in enumerate(acts.flat))
        beats.a.append(payload | int(i == groups - 1) << a_bits)
        codes = w_pad[i * g : (i + 1) * g]  # g x cols
        for b in range(weight.planes):
            bits = (codes >> b) & 1
            plane = sum(int(bits[j, c]) << (c * g + j) for c in range(cols) for j in range(g))
            beats.w.append(plane | mode << w_bits)
    out = reference(
        weight, w_codes, a_codes, activation=core.activation.name, group=g, acc_bits=core.acc_bits
    )
    beats.expected = [[int(v) for v in row] for row in out]
    beats.timing = [(len(beats.w) - 1, 1 + r) for r in range(rows)]
    return beats


def check_lut_run(beats: LutBeats, w_cycles: list[int], outputs: list[tuple[int, list[int]]]):
    """Raise AssertionError unless every expected row came, bit-exact, on its cycle."""
    if len(outputs) != len(beats.expected):
        raise AssertionError(f"{len(outputs)} output rows, expected {len(beats.expected)}")
    for i, ((cycle, values), want, (w_index, delay)) in enumerate(
        zip(outputs, beats.expected, beats.timing, strict=True)
    ):
        if values != want:
            raise AssertionError(f"output row {i}: got {values}, expected {want}")
        if cycle != w_cycles[w_index] + delay:
            raise AssertionError(
                f"output row {i} left in cycle {cycle}, the latency formula says "
                f"{w_cycles[w_index] + delay} (w beat {w_index} + {delay})"
            )

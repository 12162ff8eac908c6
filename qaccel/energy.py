"""Energy per operation, in picojoules (pJ), and the energy report of a run.

The figures come from ``cfg.energy`` (``qaccel.config.EnergyConfig``, the ``[energy]`` TOML
table); whatever it leaves out takes a default derived from the widths of the hardware that does
the operation, using M. Horowitz, "Computing's energy problem (and what we can do about it)",
ISSCC 2014 (45 nm, 0.9 V): 8-bit integer multiply 0.2 pJ, 32-bit integer add 0.1 pJ (32-bit
multiply 3.1 pJ), 64-bit read of a 32 KB SRAM 20 pJ, 64-bit DRAM access 1.3-2.6 nJ.

Default rules, each stated once:

- a multiplier of ``a`` x ``b`` bits costs 0.2 pJ * a * b / 64 (an array multiplier grows with
  the product of its operand widths; from the 8x8 figure this predicts 3.2 pJ for 32x32, against
  the published 3.1 pJ);
- an adder of ``n`` bits costs 0.1 pJ * n / 32 (linear in width, from the 32-bit figure);
- integer modes: a multiplier on the PE's weight lane (``ModeSpec.w_lane_bits``: 2 bits for
  int2, binary and ternary, 4 for int4, 8 for int8) and the activation width, plus the
  accumulate add at ``array.acc_bits``;
- float modes (FP8, FP6, FP4, posit or an integer paired with one): the PE multiplies the
  decoded significands exactly (``modes.sig_bits`` each), adds the two exponent shifts
  (``max(modes.shift_bits) + 1`` bits; nothing when one operand is an integer) and accumulates
  in fixed point at the mode's ``acc_width``. Decoders and the alignment shifter are not counted
  (the source gives no figure for them), and nothing is charged for rounding: these products are
  exact, which is why a 16-bit FP multiply (1.1 pJ in the source) is not the figure to use;
- MX modes: the float rule on the element pair accumulating into the block sum
  (``ModeSpec.block_width``), plus, once per block of ``block`` MACs, the 9-bit add of the two
  E8M0 scales and the add of the block sum into the mode's ``acc_width`` accumulator, spread
  over the block's MACs;
- a LUT-core lookup (one cell, one weight bit plane): the conditional negate of the symmetrized
  table entry (an add at the entry width, 8 + ceil(log2 group) + 1 bits) and the accumulate at
  the plane accumulator's ``acc_bits + 3`` bits. Building the tables is shared by ``tile_m``
  rows and every bit plane and is not counted;
- SRAM bytes, read or written (scratchpad and accumulator memory): 20 pJ / 8 = 2.5 pJ, the 32 KB
  figure (8 KB: 1.25 pJ, 1 MB: 12.5 pJ a byte; set your own for other bank sizes); writes are
  taken to cost what reads do, as the source gives reads only;
- DRAM bytes: 1.3 nJ / 8 = 162.5 pJ, the low end of the source's range.

Static (leakage) power is left out: it depends on process, voltage, temperature and area, none of
which the configuration states, and a number per operation cannot carry it. A caller with a
figure for it adds static power x run time to the report's total.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from qaccel import formats, modes
from qaccel.config import AcceleratorConfig

__all__ = [
    "COUNT_KEYS",
    "add_pj",
    "default_lut_lookup_pj",
    "default_mac_pj",
    "energy_report",
    "energy_table",
    "lut_lookup_pj",
    "mac_pj",
    "mult_pj",
]

# Horowitz, ISSCC 2014, 45 nm
INT8_MULT_PJ = 0.2
INT32_ADD_PJ = 0.1
SCALE_ADD_BITS = 9  # the sum of two 8-bit E8M0 scale exponents

COUNT_KEYS = ("macs", "lut_lookups", "sram_read_bytes", "sram_write_bytes", "dram_bytes")


def mult_pj(a_bits: int, b_bits: int) -> float:
    """pJ of an ``a_bits`` x ``b_bits`` integer multiply."""
    return INT8_MULT_PJ * a_bits * b_bits / 64


def add_pj(bits: int) -> float:
    """pJ of a ``bits``-wide integer add."""
    return INT32_ADD_PJ * bits / 32


def _pair_names(cfg: AcceleratorConfig) -> list[str]:
    return [str(m) for m in cfg.array.modes] if cfg.array is not None else []


def _check_pair(cfg: AcceleratorConfig, pair: str) -> None:
    known = _pair_names(cfg)
    if pair not in known:
        raise ValueError(
            f"{pair} is not a mode of configuration {cfg.name!r} "
            f"(its modes: {', '.join(known) or 'none, it has no [array]'})"
        )


def _float_product_pj(w: formats.NumberFormat, a: formats.NumberFormat) -> float:
    """The exact product of two decoded operands: significand multiply and exponent add."""
    pj = mult_pj(modes.sig_bits(w), modes.sig_bits(a))
    w_shift, a_shift = modes.shift_bits(w), modes.shift_bits(a)
    if w_shift and a_shift:
        pj += add_pj(max(w_shift, a_shift) + 1)
    return pj


def default_mac_pj(cfg: AcceleratorConfig, weight: str, activation: str) -> float:
    """The documented default pJ of one (``weight``, ``activation``) MAC on ``cfg``'s array."""
    _check_pair(cfg, f"{weight}*{activation}")
    arr = cfg.array
    spec = modes.mode_spec(
        weight,
        activation,
        rows=max(arr.rows, arr.max_k),  # the hardware sizes float accumulators so
        acc_bits=arr.acc_bits,
        mx_scale_range=arr.mx_scale_range,
    )
    if spec.integer:
        return mult_pj(spec.w_lane_bits, spec.activation.bits) + add_pj(spec.acc_width)
    product = _float_product_pj(spec.weight, spec.activation)
    if not spec.block:
        return product + add_pj(spec.acc_width)
    per_block = add_pj(SCALE_ADD_BITS) + add_pj(spec.acc_width)
    return product + add_pj(spec.block_width) + per_block / spec.block


def mac_pj(cfg: AcceleratorConfig, weight: str, activation: str) -> float:
    """pJ per multiply-accumulate of a (``weight``, ``activation``) pair of ``cfg``'s array:
    ``cfg.energy.mac`` if it lists the pair, else the default; a ValueError for a pair the
    array does not have."""
    pair = f"{weight}*{activation}"
    _check_pair(cfg, pair)
    if pair in cfg.energy.mac:
        return cfg.energy.mac[pair]
    return default_mac_pj(cfg, weight, activation)


def _check_lut(cfg: AcceleratorConfig) -> None:
    if cfg.lut is None:
        raise ValueError(f"configuration {cfg.name!r} has no [lut] core")


def default_lut_lookup_pj(cfg: AcceleratorConfig) -> float:
    """The documented default pJ of one LUT-core lookup and accumulate."""
    _check_lut(cfg)
    entry_bits = 8 + math.ceil(math.log2(cfg.lut.group)) + 1
    return add_pj(entry_bits) + add_pj(cfg.lut.acc_bits + 3)


def lut_lookup_pj(cfg: AcceleratorConfig) -> float:
    """pJ per LUT-core lookup and accumulate: ``cfg.energy.lut_lookup`` or the default."""
    _check_lut(cfg)
    if cfg.energy.lut_lookup is not None:
        return cfg.energy.lut_lookup
    return default_lut_lookup_pj(cfg)


def energy_table(cfg: AcceleratorConfig) -> dict:
    """Every figure ``energy_report`` uses for ``cfg``, in pJ: ``mac`` (pair -> pJ, in the
    array's mode order), ``lut_lookup`` (None without a LUT core), ``sram_read_byte``,
    ``sram_write_byte``, ``dram_byte``."""
    e = cfg.energy
    return {
        "mac": {p: mac_pj(cfg, *p.split("*")) for p in _pair_names(cfg)},
        "lut_lookup": lut_lookup_pj(cfg) if cfg.lut is not None else None,
        "sram_read_byte": e.sram_read_byte,
        "sram_write_byte": e.sram_write_byte,
        "dram_byte": e.dram_byte,
    }


def _count(where: str, key: str, n) -> int:
    # numbers.Integral: the simulator's counters may be numpy integers
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
        raise ValueError(f"{where}: {key} must be a non-negative integer, not {n!r}")
    return int(n)


def _parse_counts(cfg: AcceleratorConfig, counts: Mapping, where: str, keys=COUNT_KEYS) -> dict:
    """``counts`` checked, with every key present: {"macs": {pair: n}, "lut_lookups": n, ...}."""
    for key in counts:
        if key not in COUNT_KEYS:
            raise ValueError(f"{where}: unknown count {key!r} (expected one of {', '.join(keys)})")
    macs = counts.get("macs", {})
    if not isinstance(macs, Mapping):
        raise ValueError(f"{where}: macs must be a table of pair -> count, not {macs!r}")
    out = {"macs": {}}
    for pair, n in macs.items():
        _check_pair(cfg, str(pair))
        n = _count(where, f"macs[{str(pair)!r}]", n)
        out["macs"][str(pair)] = out["macs"].get(str(pair), 0) + n
    for key in COUNT_KEYS[1:]:
        out[key] = _count(where, key, counts.get(key, 0))
    if out["lut_lookups"]:
        _check_lut(cfg)
    return out


def _merge(a: dict, b: dict) -> dict:
    """The sum of two parsed counts (integers: exact)."""
    macs = dict(a["macs"])
    for pair, n in b["macs"].items():
        macs[pair] = macs.get(pair, 0) + n
    return {"macs": macs, **{k: a[k] + b[k] for k in COUNT_KEYS[1:]}}


def _report(cfg: AcceleratorConfig, c: dict) -> dict:
    e = cfg.energy
    order = _pair_names(cfg)  # the array's mode order, whatever order the counts came in
    items = {
        "macs": {p: c["macs"][p] * mac_pj(cfg, *p.split("*")) for p in order if p in c["macs"]},
        "lut_lookups": c["lut_lookups"] * lut_lookup_pj(cfg) if c["lut_lookups"] else 0.0,
        "sram_read_bytes": c["sram_read_bytes"] * e.sram_read_byte,
        "sram_write_bytes": c["sram_write_bytes"] * e.sram_write_byte,
        "dram_bytes": c["dram_bytes"] * e.dram_byte,
    }
    compute = sum(items["macs"].values(), 0.0) + items["lut_lookups"]
    sram = items["sram_read_bytes"] + items["sram_write_bytes"]
    dram = items["dram_bytes"]
    return {
        "compute": compute,
        "sram": sram,
        "dram": dram,
        "total": compute + sram + dram,
        "items": items,
    }


def energy_report(cfg: AcceleratorConfig, counts: Mapping) -> dict:
    """The energy of a run, in pJ, from its operation counts.

    ``counts``: ``{"macs": {pair: n}, "lut_lookups": n, "sram_read_bytes": n,
    "sram_write_bytes": n, "dram_bytes": n}``, any key left out meaning 0; a pair is
    ``"int4*int8"`` or a ``FormatPair``. An optional ``"units": {name: counts}`` attributes
    counts to named hardware units (``"array"``, ``"load"``, ...); the whole run is the
    top-level counts plus every unit's.

    Returns ``{"compute", "sram", "dram", "total", "items"}``: compute is the MACs and the LUT
    lookups, sram the scratchpad and accumulator bytes read and written, dram the DRAM bytes,
    total = compute + sram + dram exactly, and ``items`` the pJ of each count (``"macs"`` per
    pair). With ``"units"``, also ``"units": {name: {"compute", ..., "items"}}``; the units'
    figures add up to the whole up to float rounding (the counts are merged as integers first).
    """
    counts = dict(counts)
    units = counts.pop("units", None)
    whole = _parse_counts(cfg, counts, "counts", (*COUNT_KEYS, "units"))
    if units is None:
        return _report(cfg, whole)
    if not isinstance(units, Mapping):
        raise ValueError(f"counts: units must be a table of unit name -> counts, not {units!r}")
    parsed = {}
    for name, unit_counts in units.items():
        if not isinstance(unit_counts, Mapping):
            raise ValueError(f"counts: units[{name!r}] must be a table of counts")
        parsed[name] = _parse_counts(cfg, unit_counts, f"counts: units[{name!r}]")
        whole = _merge(whole, parsed[name])
    report = _report(cfg, whole)
    report["units"] = {name: _report(cfg, c) for name, c in parsed.items()}
    return report

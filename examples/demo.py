"""qaccel demo: the flow as far as it exists today.

For each preset configuration: validate it, then, for every (weight, activation) mode it
supports, quantize a random layer into those formats, report the quantization error against
float64, the exact accumulator each mode needs for a dot product as long as the array, and the
error of the dyadic (integer-only) requantization of the exact result to int8, and the
signal-to-noise ratio of that int8 output against the float64 layer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from qaccel import config, formats

ROOT = Path(__file__).resolve().parent.parent
SEED = 2026


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    noise = np.sum((reference - approx) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(np.sum(reference**2) / noise)


def absmax_scale(fmt: formats.NumberFormat, x: np.ndarray) -> float:
    """The per-tensor scale that maps x's largest magnitude onto the format's largest value."""
    return fmt.max_magnitude / float(np.max(np.abs(x)))


def mode_rows(cfg: config.AcceleratorConfig, rng: np.random.Generator) -> list[list[str]]:
    k = cfg.array.rows
    w = rng.normal(size=(64, k))
    a = np.abs(rng.normal(size=(k, 32)))  # post-ReLU activations
    rows = []
    for mode in cfg.array.modes:
        fw, fa = formats.get_format(mode.weight), formats.get_format(mode.activation)
        sw, sa = absmax_scale(fw, w), absmax_scale(fa, a)
        cw, ca = fw.encode(w * sw), fa.encode(a * sa)
        # The integer datapath: exact products summed in the exact fixed-point accumulator...
        acc = formats.accumulator_format(fw, fa, k)
        sig, exp = formats.exact_product(fw, cw[:, :, None], fa, ca[None, :, :])
        acc_int = acc.to_int(sig, exp).sum(axis=1)
        # ...then one dyadic multiplier takes the layer to int8 with integers only.
        real = (fw.decode(cw) @ fa.decode(ca)) / (sw * sa)
        out_scale = 127 / float(np.max(np.abs(real)))
        b, c = formats.dyadic(out_scale / (sw * sa) * 2.0**-acc.frac_bits)
        out = formats.requant(acc_int, b, c, 0, -128, 127)
        rows.append(
            [
                str(mode),
                f"{sqnr_db(w, fw.decode(cw) / sw):.1f}",
                f"{sqnr_db(a, fa.decode(ca) / sa):.1f}",
                f"{acc.width} bits ({acc.frac_bits} frac)",
                f"{np.max(np.abs(out - real * out_scale)):.3f}",
                f"{sqnr_db(w @ a * out_scale, out):.1f}",
            ]
        )
    return rows


def main() -> int:
    rng = np.random.default_rng(SEED)
    print(f"qaccel demo (seed {SEED})\n")
    for path in sorted((ROOT / "configs").glob("*.toml")):
        cfg = config.load_config(path)
        parts = []
        if cfg.array:
            parts.append(
                f"{cfg.array.rows}x{cfg.array.cols} array, dataflow {cfg.array.dataflow},"
                f" {len(cfg.array.modes)} modes"
            )
        if cfg.lut:
            bits = "/".join(f"W{b}" for b in cfg.lut.weight_bits)
            parts.append(
                f"LUT core g={cfg.lut.group} {cfg.lut.tile_m}x{cfg.lut.tile_n} "
                f"{bits}{'/ternary' if cfg.lut.ternary else ''} x {cfg.lut.activation}"
            )
        print(f"== {path.name}: {'; '.join(parts)}, {cfg.clock_mhz:g} MHz")
        if cfg.array:
            header = [
                "mode (w*a)",
                "W SQNR dB",
                "A SQNR dB",
                f"exact acc, K={cfg.array.rows}",
                "requant err (LSB)",
                "int8 out SQNR dB",
            ]
            rows = mode_rows(cfg, rng)
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
            for r in [header, ["-" * w for w in widths], *rows]:
                print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

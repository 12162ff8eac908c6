"""A Program written by hand with the builder: C = A @ W on the 4x4 array of configs/tiny.toml,
output-stationary, int8, raw accumulators out. Run: python examples/hand_program.py [OUT_DIR]"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from qaccel import config
from qaccel.program import ProgramBuilder, TensorSpec, row_major
from sim.executor import run_program

ROOT = Path(__file__).resolve().parent.parent


def builder(**gemm_changes):
    """The builder with the program's instructions (GEMM fields overridable), and W."""
    cfg = config.load_config(ROOT / "configs" / "tiny.toml")
    b = ProgramBuilder(cfg)
    g = b.geometry
    r = g.sp_row_bytes  # one scratchpad row: one step of the array
    # Output-stationary step s reads scratchpad row s: A[:, s], one bus word per array row.
    x = b.tensor(
        TensorSpec(
            "x", (4, 4), "int8", 8, b.alloc(4 * r), ((0, 1, 0, g.bus.a_word_bits), (1, 1, 0, 8 * r))
        )
    )
    w = np.arange(16).reshape(4, 4) - 8  # row s of W: one int8 weight word per column
    w_addr = b.constant(b"".join(bytes(int(v) & 0xFF for v in row).ljust(r, b"\0") for row in w))
    y = b.tensor(
        row_major(
            "y",
            (4, 4),
            "acc",
            b.alloc(4 * g.acc_row_bytes),
            pitch=g.acc_row_bytes,
            bits=8 * g.acc_elem_bytes,
        ),
        output=True,
    )
    rows = dict(mem=0, dram_stride=0, y_size=1, x_size=4)
    b.load(**rows, sram_addr=0, dram_addr=x.address)
    b.load(**rows, sram_addr=4, dram_addr=w_addr, push_next=True)  # data ready -> compute
    gemm = dict(mode=0, dataflow=1, a_addr=0, w_addr=4, acc_addr=0, m=4, k=4) | gemm_changes
    b.gemm(**gemm, pop_prev=True, push_next=True)  # results ready -> store
    b.store(
        mem=1, sram_addr=0, dram_addr=y.address, dram_stride=0, y_size=1, x_size=4, pop_prev=True
    )
    return b, w


def build():
    b, w = builder()
    return b.build(), w  # build() appends HALT and runs the checker


def main() -> int:
    program, w = build()
    print(program.listing())
    x = np.arange(16).reshape(4, 4) - 3
    result = run_program(program, {"x": x})
    print("y =", result.outputs["y"].tolist())
    assert np.array_equal(result.outputs["y"], x @ w)
    print("counters:", result.counters)
    if len(sys.argv) > 1:
        print("saved to", program.save(sys.argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The edge decoders, every code of every operand format, against qaccel.modes.decode_fields."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.operands import ScalarDecoder
from qaccel import formats
from qaccel.modes import decode_fields

OPERANDS = [
    "int8",
    "uint8",
    "int4",
    "int2",
    "uint4",
    "binary",
    "ternary",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp6_e2m3",
    "fp6_e3m2",
    "fp4_e2m1",
    "posit8_0",
    "posit8_1",
    "posit8_2",
    "posit4_1",
]


@pytest.mark.parametrize("name", OPERANDS)
def test_decoder_matches_decode_fields_on_every_code(name):
    fmt = formats.get_format(name)
    codes = fmt.finite_codes().tolist() + list(fmt.nan_codes + fmt.inf_codes)
    want_sig, want_shift, want_special = decode_fields(fmt, codes)
    dut = ScalarDecoder(fmt)
    got = []

    async def bench(ctx):
        for code in codes:
            ctx.set(dut.code, code)
            got.append((ctx.get(dut.sig), ctx.get(dut.shift), ctx.get(dut.special)))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    np.testing.assert_array_equal(
        np.array(got), np.stack([want_sig, want_shift, want_special.astype(np.int64)], axis=1)
    )

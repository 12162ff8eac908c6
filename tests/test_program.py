"""The ISA (encode/decode), Programs (builder, save/load) and the checker's rejections, one
test each, matching the message."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.gemm import lower_gemm
from qaccel import config
from qaccel.isa import ErrorCode, Geometry, Instruction, Opcode, decode, encode
from qaccel.program import (
    ProgramBuilder,
    ProgramError,
    check_program,
    load_program,
)
from sim.executor import run_program

TINY = config.load_config("configs/tiny.toml")
G = Geometry.of(TINY)
SIGNED = ("zero_point", "lo", "hi")


@st.composite
def instructions(draw):
    op = draw(st.sampled_from(list(Opcode)))
    fields = {}
    for name, member in G.layout(op):
        if name == "opcode":
            continue
        w = member.width
        if name in SIGNED:
            fields[name] = draw(st.integers(-(1 << (w - 1)), (1 << (w - 1)) - 1))
        else:
            fields[name] = draw(st.integers(0, (1 << w) - 1))
    flags = {f: bool(fields.pop(f)) for f in ("pop_prev", "pop_next", "push_prev", "push_next")}
    return Instruction(op, fields, **flags)


@settings(max_examples=300, deadline=None)
@given(instructions())
def test_encode_decode_round_trip(insn):
    word = encode(G, insn)
    assert word < 1 << (8 * G.insn_bytes)
    assert decode(G, word) == insn


def test_word_layout_is_the_struct():
    """The header sits in the low bits, fields in order: the amaranth layout is the truth."""
    layout = G.layout(Opcode.LOAD)
    insn = Instruction(Opcode.LOAD, {"y_size": 3}, push_next=True)
    word = encode(G, insn)
    assert word & 0xF == Opcode.LOAD.value
    assert (word >> layout["push_next"].offset) & 1 == 1
    assert (word >> layout["y_size"].offset) & 0xFFFF == 3


def test_decode_rejects_illegal_opcode_and_unused_bits():
    with pytest.raises(ValueError, match=r"illegal opcode 15"):
        decode(G, 15)
    with pytest.raises(ValueError, match=r"HALT has bits set above its 8 used bits"):
        decode(G, 1 << 40)


def test_encode_rejects_what_does_not_fit():
    with pytest.raises(ValueError, match=r"LOAD.y_size = 65536 does not fit 16 bits"):
        encode(G, Instruction(Opcode.LOAD, {"y_size": 1 << 16}))
    with pytest.raises(ValueError, match=r"POST.lo = -300 does not fit 9 bits"):
        encode(G, Instruction(Opcode.POST, {"lo": -300}))
    with pytest.raises(ValueError, match=r"GEMM has no field 'rows'"):
        encode(G, Instruction(Opcode.GEMM, {"rows": 1}))


def test_field_widths_follow_the_configuration():
    big = Geometry.of(config.load_config("configs/edge.toml"))
    assert big.layout(Opcode.GEMM)["acc_addr"].width > G.layout(Opcode.GEMM)["acc_addr"].width
    assert G.layout(Opcode.GEMM)["mode"].width == 4  # 11 modes


def _example():
    """examples/hand_program.py: the README's hand-written program."""
    path = Path(__file__).parent.parent / "examples" / "hand_program.py"
    spec = importlib.util.spec_from_file_location("hand_program", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hand_program(**changes):
    """A 4x4 int8 GEMM written by hand: load A and W, multiply, store the accumulators."""
    return _example().builder(**changes.pop("gemm", {}))


def test_hand_written_program_runs():
    b, w = hand_program()
    program = b.build()
    x = np.arange(16).reshape(4, 4) - 3
    result = run_program(program, {"x": x})
    assert np.array_equal(result.outputs["y"], x @ w)
    assert result.order == [0, 1, 2, 3]


def test_save_and_load_round_trip(tmp_path):
    program = lower_gemm(TINY, np.ones((5, 6), dtype=np.int64), m=3, mode="int4*int8")
    program.save(tmp_path / "p")
    loaded = load_program(tmp_path / "p", TINY)
    assert loaded.instructions == program.instructions
    assert loaded.segments == program.segments
    assert loaded.inputs == program.inputs and loaded.outputs == program.outputs
    x = np.arange(15).reshape(3, 5)
    assert np.array_equal(
        run_program(loaded, {"x": x}).outputs["y"], run_program(program, {"x": x}).outputs["y"]
    )


@pytest.fixture
def saved(tmp_path):
    program = lower_gemm(TINY, np.ones((4, 4), dtype=np.int64), m=2, mode="int8*int8")
    return program.save(tmp_path / "p")


def test_load_rejects_a_missing_file(saved):
    (saved / "dram.bin").unlink()
    with pytest.raises(ProgramError, match=r"not a program directory \(dram.bin is missing\)"):
        load_program(saved)


def test_load_rejects_truncated_dram(saved):
    data = (saved / "dram.bin").read_bytes()
    (saved / "dram.bin").write_bytes(data[:-5])
    with pytest.raises(ProgramError, match=r"dram.bin is truncated or changed"):
        load_program(saved)


def test_load_rejects_malformed_json(saved):
    (saved / "program.json").write_text("{not json")
    with pytest.raises(ProgramError, match=r"program.json: not valid JSON"):
        load_program(saved)
    (saved / "program.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ProgramError, match=r"not a qaccel program"):
        load_program(saved)


def test_load_rejects_another_configuration(saved):
    with pytest.raises(ProgramError, match=r"built for configuration 'tiny', not for 'edge'"):
        load_program(saved, config.load_config("configs/edge.toml"))


def test_load_accepts_the_same_hardware_with_other_energy_figures(saved):
    import dataclasses

    cheaper = dataclasses.replace(TINY, energy=config.EnergyConfig(dram_byte=1.0))
    loaded = load_program(saved, cheaper)
    assert loaded.config.energy.dram_byte == 1.0
    assert loaded.instructions == load_program(saved, TINY).instructions


def test_load_rejects_an_edited_configuration(saved):
    path = saved / "config.toml"
    path.write_text(path.read_text().replace("rows = 4", "rows = 5", 1))
    with pytest.raises(ProgramError, match=r"config.toml does not match"):
        load_program(saved)


def test_load_rejects_an_illegal_word(saved):
    meta = json.loads((saved / "program.json").read_text())
    data = bytearray((saved / "dram.bin").read_bytes())
    seg = next(s for s in meta["segments"] if s["address"] == meta["prog_addr"])
    data[seg["offset"]] = 0x0F  # opcode 15
    (saved / "dram.bin").write_bytes(bytes(data))
    import hashlib

    meta["dram_sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (saved / "program.json").write_text(json.dumps(meta))
    with pytest.raises(ProgramError, match=r"instruction 0: illegal opcode 15"):
        load_program(saved)


# --- the checker: one test per rejection ---------------------------------------------------


def rejected(builder, message, code):
    with pytest.raises(ProgramError, match=message) as info:
        builder.build()
    assert info.value.code == code
    return info.value


def test_rejects_scratchpad_overflow():
    b, _ = hand_program(gemm={"w_addr": G.sp_rows - 2})
    e = rejected(
        b,
        "GEMM weight rows 254..257 are outside the scratchpad \\(256 rows\\)",
        ErrorCode.SCRATCHPAD_RANGE,
    )
    assert e.index == 2


def test_rejects_accumulator_overflow():
    b, _ = hand_program(gemm={"acc_addr": G.acc_rows - 1})
    rejected(
        b,
        "instruction 2: GEMM result rows 31..34 are outside the accumulator memory",
        ErrorCode.ACCUMULATOR_RANGE,
    )


def test_rejects_dram_outside_and_misaligned():
    b = ProgramBuilder(TINY)
    b.load(
        mem=0, sram_addr=0, dram_addr=G.dram_bytes - G.data_bytes, dram_stride=0, y_size=1, x_size=4
    )
    rejected(b, "LOAD reaches DRAM byte 0x4000037, beyond", ErrorCode.DRAM_RANGE)
    b = ProgramBuilder(TINY)
    b.load(mem=0, sram_addr=0, dram_addr=3, dram_stride=0, y_size=1, x_size=1)
    rejected(b, "LOAD.dram_addr = 0x3 is not a multiple of the 8-byte bus", ErrorCode.DRAM_RANGE)


def test_rejects_an_unconfigured_mode():
    b, _ = hand_program(gemm={"mode": 12})
    rejected(b, "array mode 12 is not configured \\(11 modes\\)", ErrorCode.ILLEGAL_FIELD)


def test_rejects_a_float_gemm_longer_than_its_accumulator():
    b, _ = hand_program(gemm={"mode": 6, "k": 5})
    rejected(
        b,
        "fp8_e4m3\\*fp8_e4m3 accumulators hold 4 steps exactly; GEMM.k = 5",
        ErrorCode.ILLEGAL_FIELD,
    )


def test_rejects_weight_stationary_k_not_a_multiple_of_rows():
    b, _ = hand_program(gemm={"dataflow": 0, "k": 6})
    rejected(
        b,
        "weight-stationary GEMM.k must be a multiple of the array's 4 rows, not 6",
        ErrorCode.ILLEGAL_FIELD,
    )


def test_rejects_multi_tile_gemm_operands_beyond_the_scratchpad():
    g = G
    # weight-stationary: 3 weight tiles of A rows (3 * m) from a_addr
    b, _ = hand_program(gemm={"dataflow": 0, "k": 12, "m": 4, "a_addr": g.sp_rows - 11})
    rejected(b, "GEMM activation rows", ErrorCode.SCRATCHPAD_RANGE)
    # output-stationary: ceil(9 / 4) = 3 row tiles of k steps
    b, _ = hand_program(gemm={"dataflow": 1, "m": 9, "k": 4, "a_addr": g.sp_rows - 11})
    rejected(b, "GEMM activation rows", ErrorCode.SCRATCHPAD_RANGE)


def test_rejects_zero_sizes():
    b, _ = hand_program(gemm={"k": 0})
    rejected(b, "GEMM.k must be at least 1", ErrorCode.ILLEGAL_FIELD)


def test_rejects_lut_gemm_without_a_lut_core():
    b = ProgramBuilder(TINY)
    b.lut_gemm(mode=0, a_addr=0, w_addr=0, acc_addr=0, m=1, k=1)
    rejected(b, "LUT_GEMM on a configuration without a LUT core", ErrorCode.ILLEGAL_FIELD)


def test_rejects_post_clamp_outside_the_format():
    b = ProgramBuilder(TINY)
    b.post(acc_addr=0, out_addr=0, param_addr=4, rows=1, out_signed=0, lo=-1, hi=255)
    rejected(b, "POST clamp \\[-1, 255\\] is not within \\[0, 255\\]", ErrorCode.ILLEGAL_FIELD)


def test_rejects_token_underflow():
    b = ProgramBuilder(TINY)
    b.post(
        acc_addr=0, out_addr=0, param_addr=4, rows=1, out_signed=1, lo=-128, hi=127, pop_prev=True
    )
    e = rejected(
        b, "the queues can never drain: .*compute at instruction 0 \\(POST\\)", ErrorCode.TOKEN
    )
    assert e.index == 0


def test_rejects_a_deadlock_between_queues():
    b = ProgramBuilder(TINY)
    load = dict(mem=0, sram_addr=0, dram_addr=0, dram_stride=0, y_size=1, x_size=1)
    b.load(**load, pop_next=True, push_next=True)  # waits for compute
    b.post(
        acc_addr=0,
        out_addr=0,
        param_addr=4,
        rows=1,
        out_signed=1,
        lo=-128,
        hi=127,
        pop_prev=True,
        push_prev=True,
    )  # waits for load
    rejected(b, "can never drain", ErrorCode.TOKEN)


def test_rejects_tokens_left_at_halt():
    b = ProgramBuilder(TINY)
    b.load(mem=0, sram_addr=0, dram_addr=0, dram_stride=0, y_size=1, x_size=1, push_next=True)
    rejected(b, "tokens left at HALT: \\{'load->compute': 1\\}", ErrorCode.TOKEN)


def test_a_channel_counts_more_tokens_than_queue_entries():
    """Tokens are counters as wide as PROG_LEN: twelve loads may run ahead of their GEMMs."""
    b = ProgramBuilder(TINY)
    src = b.constant(bytes(2 * G.sp_row_bytes))
    for i in range(12):
        b.load(
            mem=0, sram_addr=2 * i, dram_addr=src, dram_stride=0, y_size=1, x_size=2, push_next=True
        )
    for i in range(12):
        b.gemm(
            mode=0, dataflow=1, a_addr=2 * i, w_addr=2 * i + 1, acc_addr=i, m=1, k=1, pop_prev=True
        )
    assert run_program(b.build(), {}).counters["INSNS"] == 24


def test_rejects_a_race_between_units():
    b, _ = hand_program()
    b._insns[1] = dataclasses.replace(b._insns[1], push_next=False)
    b._insns[2] = dataclasses.replace(b._insns[2], pop_prev=False)
    e = rejected(
        b,
        r"GEMM and instruction 0 \(LOAD\) touch the same scratchpad rows 0..3 "
        "with no token",
        ErrorCode.HAZARD,
    )
    assert e.index == 2


def test_rejects_a_read_of_rows_nothing_wrote():
    b, _ = hand_program(gemm={"w_addr": 8})
    rejected(
        b,
        "instruction 2: GEMM reads scratchpad row 8, which no earlier instruction wrote",
        ErrorCode.HAZARD,
    )


def test_rejects_a_store_over_the_program():
    b, _ = hand_program()
    b._insns[3] = dataclasses.replace(
        b._insns[3], fields=b._insns[3].fields | {"dram_addr": 0x10000, "mem": 1}
    )
    program = b.build(check=False)
    store = dataclasses.replace(
        program.instructions[3],
        fields=program.instructions[3].fields | {"dram_addr": program.prog_addr},
    )
    program.instructions[3] = store
    with pytest.raises(ProgramError, match="STORE writes over the program's own instruction"):
        check_program(program)


def test_rejects_tokens_to_a_unit_that_does_not_exist():
    b = ProgramBuilder(TINY)
    b.load(mem=0, sram_addr=0, dram_addr=0, dram_stride=0, y_size=1, x_size=1, push_prev=True)
    rejected(b, "the load unit has no upstream unit", ErrorCode.ILLEGAL_FIELD)
    b = ProgramBuilder(TINY)
    b.store(mem=0, sram_addr=0, dram_addr=0, dram_stride=0, y_size=1, x_size=1, pop_next=True)
    rejected(b, "the store unit has no downstream unit", ErrorCode.ILLEGAL_FIELD)


def test_rejects_a_program_without_halt():
    program = ProgramBuilder(TINY).build()
    program.instructions.pop()
    with pytest.raises(ProgramError, match="the program has no HALT") as info:
        check_program(program)
    assert (info.value.code, info.value.index) == (ErrorCode.NO_HALT, 0)


def test_halt_ends_the_program_and_carries_no_tokens():
    b, _ = hand_program()
    program = b.build()
    program.instructions.insert(2, program.instructions[-1])  # an early HALT: the rest is dead
    with pytest.raises(ProgramError, match="tokens left at HALT") as info:
        check_program(program)
    assert (info.value.code, info.value.index) == (ErrorCode.TOKEN, 2)  # named at the HALT
    b = ProgramBuilder(TINY)
    b.emit(Opcode.HALT, pop_prev=True)
    rejected(b, "instruction 0: HALT carries no tokens", ErrorCode.ILLEGAL_FIELD)


def test_rejects_a_field_too_wide_with_its_index():
    b = ProgramBuilder(TINY)
    b.load(mem=0, sram_addr=0, dram_addr=0, dram_stride=0, y_size=1 << 16, x_size=1)
    with pytest.raises(ProgramError, match=r"instruction 0: LOAD.y_size = 65536 does not fit"):
        b.build()


def test_compiled_programs_balance_their_tokens():
    """Many tiles and chunks: the double-buffer pattern passes the checker in every order."""
    for dataflow in ("ws", "os"):
        program = lower_gemm(
            TINY,
            np.ones((40, 13), dtype=np.int64),
            m=11,
            mode="int8*int8",
            dataflow=dataflow,
            max_chunk=4,
        )
        check_program(program)
        plan = program.notes["gemm"]
        assert plan["chunks"] == plan["tiles"] * 10  # 40 steps in chunks of 4


def test_rejects_an_element_format_for_the_scratchpad():
    b = ProgramBuilder(TINY)
    b.load(mem=0, elem=1, sram_addr=0, dram_addr=0, dram_stride=0, y_size=1, x_size=1)
    rejected(b, "LOAD.elem must be 0 for the scratchpad", ErrorCode.ILLEGAL_FIELD)


def test_int32_accumulator_rows_are_narrower_in_dram():
    assert G.acc_dram_row_bytes(1) == 4 * G.acc_cols < G.acc_row_bytes


def test_load_names_bits_above_the_fields_an_illegal_field(saved):
    import hashlib

    meta = json.loads((saved / "program.json").read_text())
    data = bytearray((saved / "dram.bin").read_bytes())
    seg = next(s for s in meta["segments"] if s["address"] == meta["prog_addr"])
    data[seg["offset"] + G.insn_bytes - 1] |= 0x80  # the top bit of instruction 0 (a LOAD)
    (saved / "dram.bin").write_bytes(bytes(data))
    meta["dram_sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (saved / "program.json").write_text(json.dumps(meta))
    with pytest.raises(ProgramError, match="instruction 0: LOAD has bits set above") as info:
        load_program(saved)
    assert info.value.code == ErrorCode.ILLEGAL_FIELD


def test_program_error_survives_pickling():
    import pickle

    e = pickle.loads(pickle.dumps(ProgramError("bad rows", ErrorCode.SCRATCHPAD_RANGE, 3)))
    assert (str(e), e.code, e.index) == ("instruction 3: bad rows", ErrorCode.SCRATCHPAD_RANGE, 3)

"""The functional executor: runs a Program instruction by instruction, results without timing.

It is the golden model of the RTL (``hw.accel``): the same memories, the same instruction
semantics (``qaccel.isa``), the block references for the arithmetic (``sim.array_model``,
``sim.lut_model``, ``sim.post_model``), and the counters the hardware keeps that do not depend
on timing (instructions, DRAM bytes, saturations, invalid results). Queues run in a token order
(``qaccel.program.token_order``): with tokens placed right, every order gives the same results.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from qaccel import formats
from qaccel.isa import AccElement, Geometry, Instruction, Opcode
from qaccel.modes import unpack_lanes
from qaccel.program import (
    Program,
    TensorSpec,
    check_program,
    read_tensor,
    token_order,
    write_tensor,
)
from sim import array_model, lut_model, post_model

__all__ = ["COUNTERS", "Machine", "RunResult", "run_program"]

# The timing-free counters, named as in qaccel.csr.
COUNTERS = ("INSNS", "DRAM_READ_BYTES", "DRAM_WRITE_BYTES", "SATURATIONS", "INVALID")


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    counters: dict[str, int]
    order: list[int] = field(default_factory=list)  # the instruction order the queues ran in


class Machine:
    """The accelerator's state: DRAM, scratchpad, accumulator memory (values and invalid flags)
    and the counters."""

    def __init__(self, geometry: Geometry, dram_size: int | None = None):
        g = self.geometry = geometry
        self.dram = bytearray(dram_size if dram_size is not None else g.dram_bytes)
        self.sp = np.zeros((g.sp_rows, g.sp_row_bytes), dtype=np.uint8)
        self.acc = np.zeros((g.acc_rows, g.acc_cols), dtype=object)
        self.invalid = np.zeros((g.acc_rows, g.acc_cols), dtype=bool)
        self.counters = dict.fromkeys(COUNTERS, 0)

    # --- DMA ------------------------------------------------------------------------------

    def _dram(self, addr: int, n: int) -> bytes:
        if addr + n > len(self.dram):
            raise ValueError(f"DRAM bytes {addr:#x}..{addr + n - 1:#x} are outside the image")
        return bytes(self.dram[addr : addr + n])

    def load(self, insn: Instruction) -> None:
        g = self.geometry
        row_bytes = g.row_bytes(insn.mem, insn.elem)
        for y in range(insn.y_size):
            chunk = self._dram(insn.dram_addr + y * insn.dram_stride, insn.x_size * row_bytes)
            self.counters["DRAM_READ_BYTES"] += len(chunk)
            first = insn.sram_addr + y * insn.x_size
            rows = np.frombuffer(chunk, dtype=np.uint8).reshape(insn.x_size, row_bytes)
            if insn.mem == 0:
                self.sp[first : first + insn.x_size] = rows
            else:
                for i, row in enumerate(rows):
                    self.acc[first + i] = self._acc_from_bytes(row, insn.elem)
                    self.invalid[first + i] = False

    def store(self, insn: Instruction) -> None:
        for y in range(insn.y_size):
            first = insn.sram_addr + y * insn.x_size
            if insn.mem == 0:
                chunk = self.sp[first : first + insn.x_size].tobytes()
            else:
                chunk = b"".join(
                    self._acc_to_bytes(first + i, insn.elem) for i in range(insn.x_size)
                )
                self.counters["INVALID"] += int(self.invalid[first : first + insn.x_size].sum())
            addr = insn.dram_addr + y * insn.dram_stride
            self._dram(addr, len(chunk))  # range check
            self.dram[addr : addr + len(chunk)] = chunk
            self.counters["DRAM_WRITE_BYTES"] += len(chunk)

    def _acc_from_bytes(self, row: np.ndarray, elem: int) -> np.ndarray:
        """An accumulator row from DRAM: NATIVE elements' low ``acc_elem_bits`` bits, signed,
        or INT32 elements sign-extended."""
        g = self.geometry
        n, bits = g.acc_elem_bytes, g.acc_elem_bits
        if elem == AccElement.INT32:
            n, bits = 4, 32
        out = np.zeros(g.acc_cols, dtype=object)
        for j in range(g.acc_cols):
            v = int.from_bytes(bytes(row[j * n : (j + 1) * n]), "little") & ((1 << bits) - 1)
            out[j] = v - (1 << bits) if v >> (bits - 1) else v
        return out

    def _acc_to_bytes(self, row: int, elem: int) -> bytes:
        g = self.geometry
        values = self.acc[row]
        n = g.acc_elem_bytes
        if elem == AccElement.INT32:
            n = 4
            clipped = np.clip(values, -(1 << 31), (1 << 31) - 1)
            self.counters["SATURATIONS"] += int((clipped != values).sum())
            values = clipped
        data = b"".join(int(v).to_bytes(n, "little", signed=True) for v in values)
        return data + bytes(g.acc_dram_row_bytes(elem) - len(data))

    # --- compute --------------------------------------------------------------------------

    def _fields(self, row: int, width: int, count: int) -> np.ndarray:
        """``count`` fields of ``width`` bits from scratchpad row ``row``, field 0 lowest."""
        value = int.from_bytes(self.sp[row].tobytes(), "little")
        mask = (1 << width) - 1
        return np.array([(value >> (i * width)) & mask for i in range(count)], dtype=np.int64)

    def gemm(self, insn: Instruction) -> None:
        g = self.geometry
        spec, bus = g.array_modes[insn.mode], g.bus
        if spec.weight.kind == "ternary":  # the PE reads a ternary code as int2, as hw does
            spec = dataclasses.replace(spec, weight=formats.get_format("int2"))
        lanes = spec.lanes
        rows, cols = g.rows, g.cols

        def a_codes(row):  # the K codes of one array-row word list, lane order
            words = self._fields(row, bus.a_word_bits, rows) & ((1 << spec.a_word_bits) - 1)
            return unpack_lanes(words, lanes, spec.a_code_bits)

        def w_codes(row):
            words = self._fields(row, bus.w_word_bits, cols) & ((1 << spec.w_word_bits) - 1)
            return unpack_lanes(words[:, None], lanes, spec.w_code_bits)  # cols x lanes

        tiles = g.gemm_tiles(insn.dataflow, insn.m, insn.k)
        if insn.dataflow == 1:  # output-stationary: step s is K slice s, one row tile at a time
            w = np.concatenate([w_codes(insn.w_addr + s).T for s in range(insn.k)], 0)
            blocks = -(-insn.k // spec.block) if spec.block else 0
            w_scales = a_scales = None
            if spec.block:
                first = insn.scale_addr + tiles * blocks
                w_scales = self.sp[first : first + blocks, :cols].astype(np.int64)
            for t in range(tiles):
                a0 = insn.a_addr + t * insn.k
                a = np.stack([a_codes(a0 + s).reshape(rows, lanes) for s in range(insn.k)], 1)
                a = a.reshape(rows, insn.k * lanes)
                if spec.block:
                    first = insn.scale_addr + t * blocks
                    a_scales = self.sp[first : first + blocks, :rows].astype(np.int64).T
                values, invalid = array_model.reference(spec, w, a, w_scales, a_scales)
                keep = min(rows, insn.m - t * rows)
                self._write_acc(
                    insn.acc_addr + t * rows, insn.accumulate, values[:keep], invalid[:keep]
                )
            return
        # weight-stationary: PE row i of tile t holds K values (t * rows + i) * lanes onward
        for t in range(tiles):
            w0, a0 = insn.w_addr + t * rows, insn.a_addr + t * insn.m
            w = np.concatenate([w_codes(w0 + i).T for i in range(rows)], 0)
            a = np.stack([a_codes(a0 + i) for i in range(insn.m)])
            values, invalid = array_model.reference(spec, w, a)
            self._write_acc(insn.acc_addr, insn.accumulate or t > 0, values, invalid)

    def lut_gemm(self, insn: Instruction) -> None:
        g = self.geometry
        weight = lut_model.lut_weight(g.lut_modes[insn.mode])
        group, tm, tn = g.lut_group, g.lut_tile_m, g.lut_tile_n
        planes = weight.planes
        a = np.concatenate(
            [self.sp[insn.a_addr + s, : tm * group].reshape(tm, group) for s in range(insn.k)], 1
        ).astype(np.int64)
        w = np.zeros((insn.k * group, tn), dtype=np.int64)
        for s in range(insn.k):
            for p in range(planes):
                bits = self._fields(insn.w_addr + s * planes + p, 1, tn * group).reshape(tn, group)
                w[s * group : (s + 1) * group] |= bits.T << p
        values = lut_model.reference(
            weight, w, a, activation=g.lut_activation, group=group, acc_bits=g.lut_acc_bits
        )
        values = values[: insn.m].astype(object)
        invalid = np.zeros(values.shape, dtype=bool)
        self._write_acc(insn.acc_addr, insn.accumulate, values, invalid)

    def _write_acc(self, acc_addr: int, accumulate, values, invalid) -> None:
        """Results into accumulator rows from ``acc_addr`` (columns beyond them untouched);
        accumulating adds with saturation at the memory's ``acc_elem_bits``, counted (wider
        than any mode's accumulator, so K cut into chunks sums exactly)."""
        m, n = values.shape
        rows = slice(acc_addr, acc_addr + m)
        if accumulate:
            total = self.acc[rows, :n] + values
            bits = self.geometry.acc_elem_bits
            lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            clipped = np.clip(total, lo, hi)
            self.counters["SATURATIONS"] += int((clipped != total).sum())
            self.acc[rows, :n] = clipped
            self.invalid[rows, :n] |= invalid
        else:
            self.acc[rows, :n] = values
            self.invalid[rows, :n] = invalid

    def post(self, insn: Instruction) -> None:
        g = self.geometry
        n = g.acc_cols
        acc = self.acc[insn.acc_addr : insn.acc_addr + insn.rows]
        invalid = self.invalid[insn.acc_addr : insn.acc_addr + insn.rows]
        bias, b, c = (self.acc[insn.param_addr + i] for i in range(3))
        # The parameter rows hold wider words; the unit reads their low bits.
        bias = np.array([((int(v) + (1 << 31)) % (1 << 32)) - (1 << 31) for v in bias])
        b = np.array([int(v) % (1 << 31) for v in b], dtype=np.int64)
        c = np.array([int(v) % (1 << 6) for v in c], dtype=np.int64)
        residual = None
        if insn.residual:
            residual = self.sp[insn.res_addr : insn.res_addr + insn.rows, :n].astype(np.int64)
        codes, saturated, inv = post_model.postprocess(
            acc,
            invalid,
            bias=bias,
            b=b,
            c=c,
            zero_point=insn.zero_point,
            lo=insn.lo,
            hi=insn.hi,
            out_signed=bool(insn.out_signed),
            residual=residual,
            res_shift=insn.res_shift,
        )
        self.counters["SATURATIONS"] += int(np.sum(saturated))
        self.counters["INVALID"] += int(np.sum(inv))
        out = self.sp[insn.out_addr : insn.out_addr + insn.rows]
        out[:] = 0
        out[:, :n] = codes

    def execute(self, insn: Instruction) -> None:
        {
            Opcode.LOAD: self.load,
            Opcode.STORE: self.store,
            Opcode.GEMM: self.gemm,
            Opcode.LUT_GEMM: self.lut_gemm,
            Opcode.POST: self.post,
        }[insn.opcode](insn)
        self.counters["INSNS"] += 1


def dram_size(program: Program) -> int:
    """Bytes of DRAM the executor models: everything the program's DMAs and tensors touch."""
    g = program.geometry
    end = max((a + len(d) for a, d in program.segments), default=0)
    for insn in program.instructions:
        if insn.opcode in (Opcode.LOAD, Opcode.STORE):
            reach = insn.x_size * g.row_bytes(insn.mem, insn.elem)
            end = max(end, insn.dram_addr + (insn.y_size - 1) * insn.dram_stride + reach)
    for spec in program.inputs + program.outputs:
        end = max(end, (int(spec.bit_offsets().max()) + spec.bits + 7) // 8)
    return end


def place_inputs(machine: Machine, program: Program, inputs: dict) -> None:
    """The constants and the input tensors into DRAM; a missing or extra input, a wrong shape
    or an out-of-range code is a ValueError naming the tensor."""
    for addr, data in program.segments:
        machine.dram[addr : addr + len(data)] = data
    known = {s.name for s in program.inputs}
    extra = set(inputs) - known
    if extra:
        raise ValueError(f"the program has no input {sorted(extra)[0]!r} (inputs: {sorted(known)})")
    for spec in program.inputs:
        if spec.name not in inputs:
            raise ValueError(f"input {spec.name!r} is missing")
        codes = _codes(spec, inputs[spec.name])
        write_tensor(machine.dram, 0, spec, codes)


def _codes(spec: TensorSpec, value) -> np.ndarray:
    value = np.asarray(value)
    if value.shape != spec.shape:
        raise ValueError(f"input {spec.name!r} must have shape {spec.shape}, not {value.shape}")
    if value.dtype.kind not in "iu":
        raise ValueError(
            f"input {spec.name!r} must hold integer {spec.format} codes, not {value.dtype} values"
        )
    if spec.format in formats.MX_FORMATS:  # element codes; the scales are their own tensor
        fmt = formats.MX_FORMATS[spec.format].element
    else:
        fmt = formats.get_format(spec.format)
    if fmt.kind == "int" and spec.format not in formats.MX_FORMATS:
        lo, hi = int(fmt.int_min), int(fmt.int_max)
        if value.size and (value.min() < lo or value.max() > hi):
            raise ValueError(f"input {spec.name!r} has values outside {spec.format} [{lo}, {hi}]")
        return value.astype(np.int64) & ((1 << spec.bits) - 1)
    if value.size and (value.min() < 0 or value.max() >= 1 << fmt.bits):
        raise ValueError(f"input {spec.name!r} has codes outside [0, {1 << fmt.bits})")
    return value.astype(np.int64)


def read_outputs(machine: Machine, program: Program) -> dict[str, np.ndarray]:
    """Every output tensor: signed values for signed integer formats and ``acc``, raw codes
    otherwise."""
    outputs = {}
    for spec in program.outputs:
        codes = read_tensor(machine.dram, 0, spec)
        if spec.format != "acc" and spec.signed:
            codes = np.where(codes >= 1 << (spec.bits - 1), codes - (1 << spec.bits), codes)
        if codes.dtype == object and all(-(1 << 63) <= v < 1 << 63 for v in codes.flat):
            codes = codes.astype(np.int64)  # wide accumulators whose values fit
        outputs[spec.name] = codes
    return outputs


def run_program(program: Program, inputs: dict) -> RunResult:
    """Run ``program`` on ``inputs`` (name -> integer codes, or signed values for integer
    formats); return the outputs (name -> values), the counters and the order run."""
    check_program(program)
    machine = Machine(program.geometry, dram_size(program))
    place_inputs(machine, program, inputs)
    body = program.body
    order = token_order(body)
    for index in order:
        machine.execute(body[index])
    return RunResult(read_outputs(machine, program), dict(machine.counters), order)

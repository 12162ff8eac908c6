"""The accelerator's instruction set, defined once for the hardware, the simulator and the
compiler.

**Machine.** Three units run their own in-order queues (decoupled access-execute, as VTA does):
the *load* unit (LOAD: DRAM -> scratchpad or accumulator memory), the *compute* unit (GEMM on
the systolic array, LUT_GEMM on the LUT core, POST: accumulators -> 8-bit codes in the
scratchpad) and the *store* unit (STORE: scratchpad or accumulator memory -> DRAM). Fetch reads
instruction words from DRAM in order and hands each to its unit's queue; HALT ends the stream,
and the run ends when every queue has drained.

**Tokens.** Four data-less channels order the units: load->compute and compute->load, compute->
store and store->compute. Every instruction carries ``pop_prev``, ``pop_next``, ``push_prev`` and
``push_next``: before it executes, its unit takes one token from each channel it pops (waiting
until there is one); after it completes, it gives one to each channel it pushes. "prev" is the
upstream unit, "next" the downstream one: load has no prev, store has no next. A channel is a
``TOKEN_BITS``-bit counter, as wide as PROG_LEN, so no program can overflow it. Popping a channel
that can never be refilled (a deadlock) or halting with tokens left over is an error
(``ErrorCode.TOKEN``), and so are token flags a unit does not have. The first HALT ends the
program: instructions after it are never fetched; HALT carries no token flags.

**Memories** (``Geometry`` has the sizes). Addresses count rows.
- Scratchpad: ``sp_rows`` rows of ``sp_row_bytes`` bytes (a multiple of the DRAM bus width).
  One row is one beat of an operand: the activation words of every array row, the weight words
  of every column, a LUT group or bit plane, one row of 8-bit outputs.
- Accumulator memory: ``acc_rows`` rows of ``acc_cols`` signed elements (``acc_elem_bits`` wide,
  ``acc_elem_bytes`` in DRAM, little-endian, sign-extended) and an invalid flag per element.
  POST also reads its per-channel parameters from here: three rows (bias, multiplier b, shift c).
- DRAM: byte addresses; every DMA address and stride is a multiple of the bus width.

**Instructions** (fields below; ``Geometry.layout(op)`` gives each as an ``amaranth.lib.data``
layout whose widths come from the configuration):
- LOAD / STORE: ``y_size`` DRAM rows, each ``x_size`` memory rows long: DRAM row y starts at
  ``dram_addr + y * dram_stride`` and maps to memory rows ``sram_addr + y * x_size`` onward. A
  memory row occupies ``sp_row_bytes`` (scratchpad) or ``acc_row_bytes(elem)`` (accumulator)
  in DRAM. ``elem`` is the accumulator elements' format in DRAM (``AccElement``): NATIVE,
  ``acc_elem_bytes`` each, exact; or INT32, 4 bytes each: sign-extended on LOAD, saturated
  (and counted) on STORE. Scratchpad transfers move raw bytes and take ``elem`` = 0.
- GEMM: ``m`` rows of results from ``k`` steps, mode ``mode`` (index into the array's modes),
  in ``Geometry.gemm_tiles`` tiles that follow each other through the array without a bubble.
  Output-stationary (``dataflow`` 1): ceil(m / rows) row tiles of ``k`` steps; step s of row
  tile t reads scratchpad rows ``a_addr + t * k + s`` (one activation word per array row) and
  ``w_addr + s`` (one weight word per column, the same rows for every tile); result row r of
  tile t goes to accumulator row ``acc_addr + t * rows + r`` when that is below m.
  Weight-stationary (``dataflow`` 0, ``k`` a multiple of ``rows``): k / rows weight tiles;
  rows ``w_addr + t * rows + i`` hold PE row i's weight words of tile t, rows
  ``a_addr + t * m + i`` (i < m) one row of A each; result row i of every tile goes to
  ``acc_addr + i``, tile 0 overwriting (unless ``accumulate``) and the others adding.
  MX modes read, for block b of ``block`` steps (nb = ceil(k / block) blocks), the E8M0 codes of
  the array rows of row tile t from scratchpad row ``scale_addr + t * nb + b`` and those of the
  columns from row ``scale_addr + tiles * nb + b``, a byte each.
  ``accumulate`` adds to the accumulator rows (saturating at ``acc_elem_bits``, wider than any
  mode's accumulator, and counted), otherwise overwrites. Within one tile the PEs'
  accumulators cannot saturate: ``Geometry.max_steps`` bounds ``k``.
- LUT_GEMM: ``m <= tile_m`` rows from ``k`` groups: group g reads activation row ``a_addr + g``
  (tile_m x group codes, a byte each, row-major) and weight bit planes ``w_addr + g * planes +
  p`` (tile_n x group bits, column-major: bit c * group + j is k index j of column c).
- POST: ``rows`` accumulator rows from ``acc_addr`` -> scratchpad rows from ``out_addr``, one
  byte per element (``sim.post_model`` has the arithmetic), with parameters from
  ``param_addr`` and, if ``residual``, 8-bit residual codes from scratchpad rows ``res_addr``.
- HALT: the end of the program.

The word: ``opcode`` and the four token bits in the low bits, then the opcode's fields in the
order listed, zero above them. ``insn_bytes`` is a power of two. Unused bits must be zero.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from amaranth.lib import data
from amaranth.lib import enum as amaranth_enum

from qaccel import config as qconfig
from qaccel import formats, modes

__all__ = [
    "FETCH_WORDS",
    "ISA_VERSION",
    "QUEUE_DEPTH",
    "STREAM_DEPTH",
    "TOKEN_BITS",
    "UNIT_OF",
    "AccElement",
    "ErrorCode",
    "Geometry",
    "Instruction",
    "Opcode",
    "decode",
    "encode",
]

ISA_VERSION = 2
TOKEN_BITS = 32  # a token channel's counter: as wide as PROG_LEN, so it cannot overflow
QUEUE_DEPTH = 4  # fetched instructions a unit's queue holds before fetch waits
STREAM_DEPTH = 4  # scratchpad rows an operand stream's FIFO holds (rows in flight counted)
FETCH_WORDS = 8  # instruction words fetch reads in one DMA read (one DRAM latency per block)
DRAM_ADDR_BITS = 32
SIZE_BITS = 16  # y_size, x_size, m, k, rows


class Opcode(amaranth_enum.Enum, shape=4):
    HALT = 0
    LOAD = 1
    STORE = 2
    GEMM = 3
    LUT_GEMM = 4
    POST = 5


UNIT_OF = {
    Opcode.LOAD: "load",
    Opcode.GEMM: "compute",
    Opcode.LUT_GEMM: "compute",
    Opcode.POST: "compute",
    Opcode.STORE: "store",
    Opcode.HALT: "fetch",
}
UNITS = ("load", "compute", "store")


class AccElement(enum.IntEnum):
    """How LOAD and STORE lay accumulator elements out in DRAM."""

    NATIVE = 0  # acc_elem_bytes each, little-endian two's complement: exact
    INT32 = 1  # 4 bytes each: LOAD sign-extends, STORE saturates (counted)


class ErrorCode(enum.IntEnum):
    """Why a run stopped early: the STATUS register's ERROR_CODE and the checker's verdicts."""

    NONE = 0
    ILLEGAL_OPCODE = 1  # an opcode the ISA does not define
    ILLEGAL_FIELD = 2  # a field out of range: unknown mode, unused bits set, zero size
    DRAM_RANGE = 3  # a DMA outside DRAM, or not aligned to the bus
    SCRATCHPAD_RANGE = 4  # rows beyond the scratchpad
    ACCUMULATOR_RANGE = 5  # rows beyond the accumulator memory
    TOKEN = 6  # a token channel can never be refilled (deadlock) or is not empty at HALT
    NO_HALT = 7  # PROG_LEN instructions fetched without a HALT
    BUS = 8  # the DRAM answered SLVERR or DECERR
    # The checker's alone (the hardware cannot see it): two units touch the same rows or DRAM
    # bytes with no token ordering them, or an instruction reads rows nothing wrote before.
    HAZARD = 9


TOKEN_FLAGS = ("pop_prev", "pop_next", "push_prev", "push_next")


def _extremes(fmt: formats.NumberFormat) -> tuple[int, int]:
    """The smallest and largest value of an integer-kind format."""
    values = fmt.decode(fmt.finite_codes())
    return int(values.min()), int(values.max())


def _bits(n: int) -> int:
    """Bits of an unsigned field holding 0..n-1 (at least 1)."""
    return max(1, (n - 1).bit_length())


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


_GEOMETRIES: dict = {}  # configuration -> Geometry


@dataclass(frozen=True)
class Geometry:
    """The sizes every part derives from a configuration: memory rows, row widths, field widths.

    Build it with ``Geometry.of(config)``."""

    data_bytes: int  # DRAM bus width (bytes per beat)
    dram_bytes: int
    sp_row_bytes: int
    sp_rows: int
    acc_cols: int
    acc_elem_bits: int
    acc_rows: int
    array_modes: tuple[modes.ModeSpec, ...]
    lut_modes: tuple[str, ...]  # the LUT core's weight formats, in mode order
    rows: int = 0  # the array, 0 without one
    cols: int = 0
    dataflow: str = "ws"
    bus: modes.BusWidths | None = None
    max_k: int = 0  # longest GEMM in steps (float accumulators are sized for it)
    pe_stages: int = 0  # the PEs' pipeline registers: cycles added to the array's latency
    lut_group: int = 0
    lut_tile_m: int = 0
    lut_tile_n: int = 0
    lut_acc_bits: int = 0
    lut_activation: str = "int8"
    insn_bytes: int = 16
    _layouts: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, cfg: qconfig.AcceleratorConfig) -> Geometry:
        """The geometry of ``cfg`` (computed once per configuration: it checks every mode)."""
        geometry = _GEOMETRIES.get(cfg)
        if geometry is None:
            geometry = _GEOMETRIES[cfg] = cls._derive(cfg)
        return geometry

    @classmethod
    def _derive(cls, cfg: qconfig.AcceleratorConfig) -> Geometry:
        data_bytes = cfg.dram.bytes_per_cycle
        need_sp, acc_cols, acc_bits = 0, 0, [32]  # 32: POST's parameter rows
        array_modes, lut_modes, kw = (), (), {}
        if cfg.array is not None:
            arr = cfg.array
            max_k = max(arr.rows, arr.max_k)
            array_modes = tuple(
                modes.mode_spec(
                    p.weight,
                    p.activation,
                    rows=max_k,
                    acc_bits=arr.acc_bits,
                    mx_scale_range=arr.mx_scale_range,
                )
                for p in arr.modes
            )
            bus = modes.BusWidths.of(array_modes)
            need_sp = max(
                -(-arr.rows * bus.a_word_bits // 8),
                -(-arr.cols * bus.w_word_bits // 8),
                arr.rows + arr.cols if bus.scale_bits else 0,
            )
            acc_cols = arr.cols
            acc_bits += [m.acc_width for m in array_modes]
            kw |= dict(rows=arr.rows, cols=arr.cols, dataflow=arr.dataflow, bus=bus, max_k=max_k)
            kw |= dict(pe_stages=modes.pe_stages(array_modes, arr.pipelined))
        if cfg.lut is not None:
            lut = cfg.lut
            names = []
            for bits in lut.weight_bits:
                names += ["binary"] if bits == 1 else [f"int{bits}", f"uint{bits}"]
            if lut.ternary:
                names.append("ternary")
            lut_modes = tuple(names)
            need_sp = max(need_sp, lut.tile_m * lut.group, -(-lut.tile_n * lut.group // 8))
            acc_cols = max(acc_cols, lut.tile_n)
            acc_bits.append(lut.acc_bits)
            kw |= dict(
                lut_group=lut.group,
                lut_tile_m=lut.tile_m,
                lut_tile_n=lut.tile_n,
                lut_acc_bits=lut.acc_bits,
                lut_activation=lut.activation,
            )
        need_sp = max(need_sp, acc_cols)  # POST writes one byte per accumulator column
        sp_row_bytes = _round_up(need_sp, data_bytes)
        acc_elem_bits = max(acc_bits)
        acc_elem_bytes = 1 << max(2, math.ceil(math.log2(-(-acc_elem_bits // 8))))
        mem = cfg.memory
        sp_rows = mem.scratchpad_kib * 1024 // sp_row_bytes
        acc_rows = mem.accumulator_kib * 1024 // (acc_cols * acc_elem_bytes)
        if acc_elem_bits > 160:
            raise qconfig.ConfigError(
                "array.mx_scale_range",
                f"accumulators of {acc_elem_bits} bits are wider than the post-processing "
                "unit's 160: narrow the MX scale window",
            )
        for what, n in (("scratchpad", sp_rows), ("accumulator memory", acc_rows)):
            if n < 4:
                raise qconfig.ConfigError(
                    "memory", f"the {what} holds {n} rows; a program needs at least 4"
                )
        geometry = cls(
            data_bytes=data_bytes,
            dram_bytes=cfg.dram.size_mib << 20,
            sp_row_bytes=sp_row_bytes,
            sp_rows=sp_rows,
            acc_cols=acc_cols,
            acc_elem_bits=acc_elem_bits,
            acc_rows=acc_rows,
            array_modes=array_modes,
            lut_modes=lut_modes,
            **kw,
        )
        widest = max(geometry.layout(op).size for op in Opcode)
        insn_bytes = max(8, 1 << math.ceil(math.log2(-(-widest // 8))))
        object.__setattr__(geometry, "insn_bytes", insn_bytes)
        return geometry

    # --- derived sizes --------------------------------------------------------------------

    @property
    def acc_elem_bytes(self) -> int:
        return 1 << max(2, math.ceil(math.log2(-(-self.acc_elem_bits // 8))))

    @property
    def acc_row_bytes(self) -> int:
        """One accumulator row's bytes in DRAM, NATIVE elements (padded to the bus width)."""
        return self.acc_dram_row_bytes(AccElement.NATIVE)

    def acc_dram_row_bytes(self, elem: int) -> int:
        """One accumulator row's bytes in DRAM with elements ``elem`` (``AccElement``)."""
        size = self.acc_elem_bytes if elem == AccElement.NATIVE else 4
        return _round_up(self.acc_cols * size, self.data_bytes)

    def row_bytes(self, mem: int, elem: int = 0) -> int:
        """DRAM bytes of one row of memory ``mem`` (0 scratchpad, 1 accumulator)."""
        return self.sp_row_bytes if mem == 0 else self.acc_dram_row_bytes(elem)

    def mem_rows(self, mem: int) -> int:
        return self.sp_rows if mem == 0 else self.acc_rows

    def max_steps(self, mode: int) -> int:
        """The longest output-stationary GEMM (in steps) of array mode ``mode`` whose
        accumulators cannot saturate: float and MX modes by ``max_k`` (MX also by the guard
        bits), integer modes by ``acc_bits`` against the largest product; at most 65535."""
        key = ("max_steps", mode)
        if key not in self._layouts:  # decoding every code to find the extremes is slow
            self._layouts[key] = self._max_steps(mode)
        return self._layouts[key]

    def _max_steps(self, mode: int) -> int:
        spec = self.array_modes[mode]
        if not spec.integer:
            steps = self.max_k
            if spec.block:
                steps = min(steps, spec.block << modes.MX_GUARD_BITS)
            return min(steps, (1 << SIZE_BITS) - 1)
        largest = max(abs(v) for v in _extremes(spec.weight)) * max(
            abs(v) for v in _extremes(spec.activation)
        )
        return min(
            ((1 << (spec.acc_width - 1)) - 1) // (spec.lanes * largest), (1 << SIZE_BITS) - 1
        )

    def gemm_tiles(self, dataflow: int, m: int, k: int) -> int:
        """A GEMM's tiles: output-stationary, ceil(m / rows) row tiles of k steps each;
        weight-stationary, k / rows weight tiles of rows steps each."""
        return -(-m // self.rows) if dataflow else k // self.rows

    def lut_max_groups(self, mode: int) -> int:
        """The longest LUT_GEMM (in groups) whose accumulators cannot saturate."""
        key = ("lut_max_groups", mode)
        if key in self._layouts:
            return self._layouts[key]
        largest = max(abs(v) for v in _extremes(formats.get_format(self.lut_modes[mode])))
        act = 128 if self.lut_activation == "int8" else 255
        bound = ((1 << (self.lut_acc_bits - 1)) - 1) // (self.lut_group * act * largest)
        self._layouts[key] = min(bound, (1 << SIZE_BITS) - 1)
        return self._layouts[key]

    def lut_planes(self, mode: int) -> int:
        """Bit planes of LUT mode ``mode``: one per weight bit."""
        return formats.get_format(self.lut_modes[mode]).bits

    @property
    def has_array(self) -> bool:
        return self.rows > 0

    @property
    def has_lut(self) -> bool:
        return self.lut_group > 0

    # --- the instruction word -------------------------------------------------------------

    def field_table(self, op: Opcode) -> dict[str, tuple[int, int]]:
        """``layout(op)``'s fields as {name: (bit offset, width)}, in layout order."""
        key = ("table", Opcode(op))
        if key not in self._layouts:
            self._layouts[key] = {
                name: (member.offset, member.width) for name, member in self.layout(op)
            }
        return self._layouts[key]

    def layout(self, op: Opcode) -> data.StructLayout:
        """The fields of ``op`` as a StructLayout: the header (opcode, tokens) then its own."""
        op = Opcode(op)
        if op not in self._layouts:
            self._layouts[op] = data.StructLayout({**self._header(), **self._fields(op)})
        return self._layouts[op]

    def _header(self) -> dict:
        return {"opcode": Opcode, **{flag: 1 for flag in TOKEN_FLAGS}}

    def _fields(self, op: Opcode) -> dict:
        sp, acc = _bits(self.sp_rows), _bits(self.acc_rows)
        if op in (Opcode.LOAD, Opcode.STORE):
            return {
                "mem": 1,
                "elem": 1,
                "sram_addr": max(sp, acc),
                "dram_addr": DRAM_ADDR_BITS,
                "dram_stride": DRAM_ADDR_BITS,
                "y_size": SIZE_BITS,
                "x_size": SIZE_BITS,
            }
        if op == Opcode.GEMM:
            return {
                "mode": _bits(max(1, len(self.array_modes))),
                "dataflow": 1,
                "accumulate": 1,
                "a_addr": sp,
                "w_addr": sp,
                "scale_addr": sp,
                "acc_addr": acc,
                "m": SIZE_BITS,
                "k": SIZE_BITS,
            }
        if op == Opcode.LUT_GEMM:
            return {
                "mode": _bits(max(1, len(self.lut_modes))),
                "accumulate": 1,
                "a_addr": sp,
                "w_addr": sp,
                "acc_addr": acc,
                "m": SIZE_BITS,
                "k": SIZE_BITS,
            }
        if op == Opcode.POST:
            return {
                "acc_addr": acc,
                "out_addr": sp,
                "param_addr": acc,
                "res_addr": sp,
                "rows": SIZE_BITS,
                "residual": 1,
                "res_shift": 4,
                "out_signed": 1,
                "zero_point": 9,  # two's complement, -256..255
                "lo": 9,
                "hi": 9,
            }
        return {}


SIGNED_FIELDS = ("zero_point", "lo", "hi")


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction: its opcode, token flags and fields (plain ints; the signed
    POST fields as signed values)."""

    opcode: Opcode
    fields: dict = field(default_factory=dict)
    pop_prev: bool = False
    pop_next: bool = False
    push_prev: bool = False
    push_next: bool = False

    def __getattr__(self, name):
        try:
            return self.__dict__["fields"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def unit(self) -> str:
        return UNIT_OF[self.opcode]

    def __str__(self) -> str:
        tokens = [f for f in TOKEN_FLAGS if getattr(self, f)]
        args = ", ".join(f"{k}={v}" for k, v in self.fields.items())
        return f"{self.opcode.name}({args})" + (f" [{' '.join(tokens)}]" if tokens else "")

    def to_dict(self) -> dict:
        return {
            "op": self.opcode.name,
            **self.fields,
            **{f: 1 for f in TOKEN_FLAGS if getattr(self, f)},
        }


def encode(geometry: Geometry, insn: Instruction) -> int:
    """The instruction word as an integer (``insn_bytes`` little-endian bytes in DRAM)."""
    table = geometry.field_table(insn.opcode)
    unknown = set(insn.fields) - table.keys()
    if unknown:
        raise ValueError(f"{insn.opcode.name} has no field {sorted(unknown)[0]!r}")
    word = 0
    values = {"opcode": insn.opcode.value, **{f: int(getattr(insn, f)) for f in TOKEN_FLAGS}}
    values |= insn.fields
    for name, (offset, width) in table.items():
        value = int(values.get(name, 0))
        if name in SIGNED_FIELDS:
            if not -(1 << (width - 1)) <= value < 1 << (width - 1):
                raise ValueError(f"{insn.opcode.name}.{name} = {value} does not fit {width} bits")
            value &= (1 << width) - 1
        elif not 0 <= value < 1 << width:
            raise ValueError(f"{insn.opcode.name}.{name} = {value} does not fit {width} bits")
        word |= value << offset
    return word


def decode(geometry: Geometry, word: int) -> Instruction:
    """The instruction in a word; ValueError for an unknown opcode or unused bits set."""
    code = word & 0xF
    try:
        op = Opcode(code)
    except ValueError:
        raise ValueError(f"illegal opcode {code}") from None
    table = geometry.field_table(op)
    size = geometry.layout(op).size
    if word >> size:
        raise ValueError(f"{op.name} has bits set above its {size} used bits")
    values = {}
    for name, (offset, width) in table.items():
        value = (word >> offset) & ((1 << width) - 1)
        if name in SIGNED_FIELDS and value >> (width - 1):
            value -= 1 << width
        values[name] = value
    del values["opcode"]
    flags = {f: bool(values.pop(f)) for f in TOKEN_FLAGS}
    return Instruction(op, values, **flags)

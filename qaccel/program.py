"""Programs: instructions, the DRAM image they run on, and their named input and output tensors.

A ``Program`` is what the compiler emits, the simulator and the RTL run, and a user can write by
hand with ``ProgramBuilder``. It is saved as a directory (``program.json``, ``dram.bin``,
``config.toml``) and loaded back by ``load_program``, which rejects a malformed, truncated or
other-configuration directory with a one-line ``ProgramError``. ``check_program`` rejects, before
anything runs, what would make the hardware stop with an error (``isa.ErrorCode``): fields out of
range, rows outside a memory, DMA outside DRAM or off the bus alignment, and token schedules that
underflow, overflow or leave tokens behind; the message names the instruction.

**Tensors in DRAM.** A ``TensorSpec`` places a 2-D tensor of codes (``bits`` wide each) by an
affine bit layout: element (i, j) starts at bit ``8 * address + sum(((index[axis] // div) % mod)
* stride)`` over its ``terms`` (mod 0: no modulus). Row-major int8 is ``[(0, 1, 0, 8 * pitch),
(1, 1, 0, 8)]``; the compiler uses blocked and transposed layouts to match the array's beats.
A host loads the DRAM image (``segments``) first, then writes each input's elements: bytes of
a region that no element covers keep the image's value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qaccel import config as qconfig
from qaccel import formats
from qaccel.isa import (
    QUEUE_DEPTH,
    TOKEN_FLAGS,
    UNITS,
    ErrorCode,
    Geometry,
    Instruction,
    Opcode,
    decode,
    encode,
)

__all__ = [
    "Program",
    "ProgramBuilder",
    "ProgramError",
    "TensorSpec",
    "check_program",
    "load_program",
    "row_major",
    "token_order",
]

FORMAT_VERSION = 1


class ProgramError(ValueError):
    """A program the accelerator would reject; ``index`` is the instruction (or None)."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.ILLEGAL_FIELD, index=None):
        where = f"instruction {index}: " if index is not None else ""
        super().__init__(where + message)
        self.code, self.index = code, index
        self._message = message

    def __reduce__(self):  # across processes (parallel layer timing) with its code and index
        return type(self), (self._message, self.code, self.index)


# --- tensors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """A named 2-D tensor of ``bits``-wide codes in DRAM (see the module docstring).

    ``format``: a ``qaccel.formats`` name, or ``"acc"`` for raw signed accumulator values.
    ``quant``: how codes map to real values, for whoever reads the tensor (scale, zero_point,
    frac_bits), carried as given."""

    name: str
    shape: tuple[int, int]
    format: str
    bits: int
    address: int
    terms: tuple[tuple[int, int, int, int], ...]
    quant: dict = field(default_factory=dict)

    def bit_offsets(self) -> np.ndarray:
        """The start bit of every element, shape ``shape`` (int64)."""
        i, j = np.indices(self.shape, dtype=np.int64)
        index = (i, j)
        offset = np.full(self.shape, 8 * self.address, dtype=np.int64)
        for axis, div, mod, stride in self.terms:
            q = index[axis] // div
            offset += (q % mod if mod else q) * stride
        return offset

    @property
    def signed(self) -> bool:
        if self.format == "acc":
            return True
        fmt = formats.FORMATS.get(self.format)
        return fmt is not None and fmt.kind == "int" and fmt.signed

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "format": self.format,
            "bits": self.bits,
            "address": self.address,
            "terms": [list(t) for t in self.terms],
            "quant": self.quant,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(
            name=str(d["name"]),
            shape=tuple(int(x) for x in d["shape"]),
            format=str(d["format"]),
            bits=int(d["bits"]),
            address=int(d["address"]),
            terms=tuple(tuple(int(x) for x in t) for t in d["terms"]),
            quant=dict(d.get("quant", {})),
        )


def row_major(
    name: str, shape, fmt: str, address: int, *, pitch: int | None = None, bits: int = 8
) -> TensorSpec:
    """A row-major tensor of byte-aligned ``bits``-wide codes, rows ``pitch`` bytes apart."""
    elem = max(1, bits // 8)
    pitch = pitch if pitch is not None else shape[1] * elem
    return TensorSpec(
        name, tuple(shape), fmt, bits, address, ((0, 1, 0, 8 * pitch), (1, 1, 0, 8 * elem))
    )


def write_tensor(image: bytearray, base: int, spec: TensorSpec, codes) -> None:
    """Write the codes of ``spec`` into ``image`` (DRAM bytes from address ``base``)."""
    codes = np.asarray(codes)
    if codes.shape != spec.shape:
        raise ValueError(f"{spec.name} has shape {spec.shape}, not {codes.shape}")
    mask = (1 << spec.bits) - 1
    values = codes.astype(object) if spec.bits > 62 else codes.astype(np.int64)
    offsets = spec.bit_offsets() - 8 * base
    for off, value in zip(offsets.flat, values.flat, strict=True):
        _put_bits(image, int(off), spec.bits, int(value) & mask)


def read_tensor(image, base: int, spec: TensorSpec) -> np.ndarray:
    """The codes of ``spec`` from ``image``; signed formats and ``acc`` sign-extended."""
    offsets = spec.bit_offsets() - 8 * base
    out = np.empty(spec.shape, dtype=object)
    for idx, off in np.ndenumerate(offsets):
        value = _get_bits(image, int(off), spec.bits)
        if spec.format == "acc" and value >> (spec.bits - 1):
            value -= 1 << spec.bits
        out[idx] = value
    return out.astype(np.int64) if spec.bits <= 62 else out


def _put_bits(image: bytearray, offset: int, bits: int, value: int) -> None:
    first, last = offset // 8, (offset + bits - 1) // 8
    if first < 0 or last >= len(image):
        raise ValueError(f"bits {offset}..{offset + bits} are outside the DRAM image")
    shift = offset % 8
    span = int.from_bytes(image[first : last + 1], "little")
    mask = ((1 << bits) - 1) << shift
    span = (span & ~mask) | (value << shift)
    image[first : last + 1] = span.to_bytes(last - first + 1, "little")


def _get_bits(image, offset: int, bits: int) -> int:
    first, last = offset // 8, (offset + bits - 1) // 8
    span = int.from_bytes(bytes(image[first : last + 1]), "little")
    return (span >> (offset % 8)) & ((1 << bits) - 1)


# --- the program ---------------------------------------------------------------------------


@dataclass
class Program:
    """Instructions + DRAM image (segments of constants) + named tensors + configuration."""

    config: qconfig.AcceleratorConfig
    instructions: list[Instruction]
    segments: list[tuple[int, bytes]]  # (address, bytes) of constants; instructions included
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    prog_addr: int
    notes: dict = field(default_factory=dict)  # free-form facts from the compiler

    @property
    def geometry(self) -> Geometry:
        return Geometry.of(self.config)

    @property
    def body(self) -> list[Instruction]:
        """The instructions fetch hands out: those before the first HALT."""
        halt = next(
            (i for i, x in enumerate(self.instructions) if x.opcode == Opcode.HALT),
            len(self.instructions),
        )
        return self.instructions[:halt]

    def tensor(self, name: str) -> TensorSpec:
        for spec in self.inputs + self.outputs:
            if spec.name == name:
                return spec
        names = ", ".join(s.name for s in self.inputs + self.outputs)
        raise KeyError(f"the program has no tensor {name!r} (it has {names})")

    def listing(self) -> str:
        return "\n".join(f"{i:5d}  {insn}" for i, insn in enumerate(self.instructions))

    def save(self, directory: str | Path) -> Path:
        """Write ``program.json``, ``dram.bin`` and ``config.toml`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        blob, index = bytearray(), []
        for addr, data in self.segments:
            index.append({"address": addr, "offset": len(blob), "length": len(data)})
            blob += data
        toml = qconfig.dump_toml(self.config)
        meta = {
            "format": "qaccel-program",
            "version": FORMAT_VERSION,
            "config_sha256": hashlib.sha256(toml.encode()).hexdigest(),
            "dram_sha256": hashlib.sha256(blob).hexdigest(),
            "prog_addr": self.prog_addr,
            "instruction_count": len(self.instructions),
            "segments": index,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "notes": self.notes,
            "listing": [str(i) for i in self.instructions],
        }
        (directory / "program.json").write_text(json.dumps(meta, indent=1) + "\n")
        (directory / "dram.bin").write_bytes(bytes(blob))
        (directory / "config.toml").write_text(toml)
        return directory


def load_program(directory: str | Path, config: qconfig.AcceleratorConfig | None = None):
    """The Program saved in ``directory``; with ``config``, also check it was built for it."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "program.json").read_text())
        blob = (directory / "dram.bin").read_bytes()
        toml = (directory / "config.toml").read_text()
    except FileNotFoundError as e:
        raise ProgramError(
            f"{directory}: not a program directory ({Path(e.filename).name} is missing)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProgramError(f"{directory}/program.json: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != "qaccel-program":
        raise ProgramError(f"{directory}/program.json: not a qaccel program")
    if meta.get("version") != FORMAT_VERSION:
        raise ProgramError(
            f"{directory}: program format version {meta.get('version')}, "
            f"this qaccel reads {FORMAT_VERSION}"
        )
    if hashlib.sha256(toml.encode()).hexdigest() != meta.get("config_sha256"):
        raise ProgramError(
            f"{directory}/config.toml does not match the one the program was built for"
        )
    if hashlib.sha256(blob).hexdigest() != meta.get("dram_sha256"):
        raise ProgramError(f"{directory}/dram.bin is truncated or changed ({len(blob)} bytes)")
    try:
        cfg = qconfig.config_from_dict(__import__("tomllib").loads(toml))
    except (qconfig.ConfigError, ValueError) as e:
        raise ProgramError(f"{directory}/config.toml: {e}") from None
    if config is not None:
        if _hardware(config) != _hardware(cfg):
            raise ProgramError(
                f"{directory} was built for configuration {cfg.name!r}, "
                f"not for {config.name!r} (they differ)"
            )
        cfg = config  # the same hardware; the caller's energy figures apply
    try:
        segments = [
            (int(s["address"]), blob[int(s["offset"]) : int(s["offset"]) + int(s["length"])])
            for s in meta["segments"]
        ]
        inputs = [TensorSpec.from_dict(d) for d in meta["inputs"]]
        outputs = [TensorSpec.from_dict(d) for d in meta["outputs"]]
        prog_addr, count = int(meta["prog_addr"]), int(meta["instruction_count"])
    except (KeyError, TypeError, ValueError) as e:
        raise ProgramError(f"{directory}/program.json: malformed ({e!r})") from None
    geometry = Geometry.of(cfg)
    image = _image_of(segments)
    words = []
    for i in range(count):
        start = prog_addr + i * geometry.insn_bytes - image[0]
        chunk = image[1][start : start + geometry.insn_bytes]
        if start < 0 or len(chunk) != geometry.insn_bytes:
            raise ProgramError(f"{directory}: instruction {i} is not in the DRAM image")
        words.append(int.from_bytes(chunk, "little"))
    instructions = []
    opcodes = {op.value for op in Opcode}
    for i, word in enumerate(words):
        try:
            instructions.append(decode(geometry, word))
        except ValueError as e:  # an unknown opcode, or bits set above an opcode's fields
            code = (
                ErrorCode.ILLEGAL_OPCODE if word & 0xF not in opcodes else ErrorCode.ILLEGAL_FIELD
            )
            raise ProgramError(str(e), code, i) from None
    program = Program(
        cfg, instructions, segments, inputs, outputs, prog_addr, meta.get("notes", {})
    )
    check_program(program)
    return program


def _hardware(cfg: qconfig.AcceleratorConfig) -> str:
    """The configuration as far as a program depends on it: everything but the energy table."""
    return qconfig.dump_toml(dataclasses.replace(cfg, energy=qconfig.EnergyConfig()))


def _image_of(segments) -> tuple[int, bytes]:
    """(base, bytes) covering every segment."""
    if not segments:
        return 0, b""
    base = min(a for a, _ in segments)
    end = max(a + len(d) for a, d in segments)
    image = bytearray(end - base)
    for addr, data in segments:
        image[addr - base : addr - base + len(data)] = data
    return base, bytes(image)


# --- the checker ---------------------------------------------------------------------------


def token_order(instructions: list[Instruction], prefer: tuple[str, ...] = UNITS) -> list[int]:
    """An order the three queues can execute in under their tokens: fetch hands instructions
    out in program order, each queue holding at most ``QUEUE_DEPTH`` that have not started;
    each unit runs ahead as far as its tokens allow, ``prefer`` first. Raises ProgramError
    (TOKEN) if the queues deadlock, or if a channel holds tokens at the end (named at
    ``len(instructions)``: the HALT)."""
    queues = {u: [i for i, x in enumerate(instructions) if x.unit == u] for u in UNITS}
    channels = {
        ("load", "compute"): 0,
        ("compute", "load"): 0,
        ("compute", "store"): 0,
        ("store", "compute"): 0,
    }
    upstream = {"load": None, "compute": "load", "store": "compute"}
    downstream = {"load": "compute", "compute": "store", "store": None}
    heads = dict.fromkeys(UNITS, 0)
    fetched = dict.fromkeys(UNITS, 0)  # per unit: how many of its instructions fetch handed out
    fetch = 0  # the next instruction fetch reads
    order = []

    def do_fetch():
        nonlocal fetch
        while fetch < len(instructions):
            unit = instructions[fetch].unit
            if fetched[unit] - heads[unit] >= QUEUE_DEPTH:
                return  # the queue is full: fetch waits, in order
            fetched[unit] += 1
            fetch += 1

    def pops(unit, insn):
        need = []
        if insn.pop_prev:
            need.append((upstream[unit], unit))
        if insn.pop_next:
            need.append((downstream[unit], unit))
        return need

    while any(heads[u] < len(queues[u]) for u in UNITS):
        progressed = False
        do_fetch()
        for unit in prefer:
            while heads[unit] < fetched[unit]:
                index = queues[unit][heads[unit]]
                insn = instructions[index]
                need = pops(unit, insn)
                if any(channels[c] == 0 for c in need):
                    break
                for c in need:
                    channels[c] -= 1
                for flag, other in (("push_prev", upstream[unit]), ("push_next", downstream[unit])):
                    if getattr(insn, flag):
                        channels[(unit, other)] += 1
                order.append(index)
                heads[unit] += 1
                progressed = True
                do_fetch()
        if not progressed:
            stuck = [
                f"{u} at instruction {queues[u][heads[u]]} "
                f"({instructions[queues[u][heads[u]]].opcode.name})"
                for u in UNITS
                if heads[u] < fetched[u]
            ]
            if fetch < len(instructions):
                stuck.append(f"fetch at instruction {fetch} (its queue is full)")
            first = min(queues[u][heads[u]] for u in UNITS if heads[u] < fetched[u])
            raise ProgramError(
                "the queues can never drain: waiting for tokens that never come: "
                + ", ".join(stuck),
                ErrorCode.TOKEN,
                first,
            )
    left = {f"{a}->{b}": n for (a, b), n in channels.items() if n}
    if left:
        raise ProgramError(
            f"tokens left at HALT: {left} (every push needs a pop)",
            ErrorCode.TOKEN,
            len(instructions),
        )
    return order


def check_program(program: Program) -> None:
    """Raise ProgramError for anything the accelerator would stop on (see the module
    docstring); returns None for a program that runs to HALT."""
    g = program.geometry
    insns = program.instructions
    halt = next((i for i, x in enumerate(insns) if x.opcode == Opcode.HALT), None)
    if halt is None:
        raise ProgramError(
            "the program has no HALT (fetch would run past its end)", ErrorCode.NO_HALT, len(insns)
        )
    insns = insns[: halt + 1]  # fetch never reads past the first HALT
    for i, insn in enumerate(insns):
        try:
            encode(g, insn)
            _check_insn(g, insn)
        except ProgramError as e:
            raise ProgramError(str(e), e.code, i) from None
        except ValueError as e:
            raise ProgramError(str(e), ErrorCode.ILLEGAL_FIELD, i) from None
    for spec in program.inputs + program.outputs:
        offsets = spec.bit_offsets()
        lo, hi = int(offsets.min()) // 8, (int(offsets.max()) + spec.bits - 1) // 8
        if lo < 0 or hi >= g.dram_bytes:
            raise ProgramError(f"tensor {spec.name} lies outside DRAM", ErrorCode.DRAM_RANGE)
    end = program.prog_addr + len(insns) * g.insn_bytes
    if program.prog_addr % g.insn_bytes or end > g.dram_bytes:
        raise ProgramError(
            f"the instruction stream at {program.prog_addr:#x} is misaligned or outside DRAM",
            ErrorCode.DRAM_RANGE,
        )
    body = insns[:-1]
    order = token_order(body)
    _check_hazards(g, body, order, (program.prog_addr, end))


def _footprint(g: Geometry, insn: Instruction) -> list[tuple[str, int, int, bool]]:
    """What an instruction reads and writes: (space, first, end, is_write) with space "sp",
    "acc" (rows) or "dram" (bytes; a strided transfer's bounding range)."""
    op = insn.opcode
    if op in (Opcode.LOAD, Opcode.STORE):
        mem = "acc" if insn.mem else "sp"
        rows = (mem, insn.sram_addr, insn.sram_addr + insn.y_size * insn.x_size)
        reach = (insn.y_size - 1) * insn.dram_stride + insn.x_size * g.row_bytes(
            insn.mem, insn.elem
        )
        dram = ("dram", insn.dram_addr, insn.dram_addr + reach)
        return (
            [(*dram, False), (*rows, True)]
            if op == Opcode.LOAD
            else [
                (*rows, False),
                (*dram, True),
            ]
        )
    if op == Opcode.POST:
        out = [
            ("acc", insn.acc_addr, insn.acc_addr + insn.rows, False),
            ("acc", insn.param_addr, insn.param_addr + 3, False),
            ("sp", insn.out_addr, insn.out_addr + insn.rows, True),
        ]
        if insn.residual:
            out.append(("sp", insn.res_addr, insn.res_addr + insn.rows, False))
        return out
    if op == Opcode.GEMM:
        spec = g.array_modes[insn.mode]
        os = insn.dataflow == 1
        tiles = g.gemm_tiles(insn.dataflow, insn.m, insn.k)
        a = tiles * (insn.k if os else insn.m)
        out = [
            ("sp", insn.a_addr, insn.a_addr + a, False),
            ("sp", insn.w_addr, insn.w_addr + insn.k, False),
        ]
        if os and spec.block:
            scales = (tiles + 1) * -(-insn.k // spec.block)
            out.append(("sp", insn.scale_addr, insn.scale_addr + scales, False))
    else:  # LUT_GEMM
        planes = g.lut_planes(insn.mode)
        out = [
            ("sp", insn.a_addr, insn.a_addr + insn.k, False),
            ("sp", insn.w_addr, insn.w_addr + insn.k * planes, False),
        ]
    rows = ("acc", insn.acc_addr, insn.acc_addr + insn.m)
    if insn.accumulate:
        out.append((*rows, False))
    return [*out, (*rows, True)]


def _check_hazards(g: Geometry, body: list[Instruction], order: list[int], stream) -> None:
    """Every pair of instructions of different units that touch the same rows or bytes, one of
    them writing, must be ordered by tokens (happens-before through the matched pushes and
    pops, as vector clocks); and every row read must have been written before. Raises
    ProgramError(HAZARD) naming the later instruction."""
    units = {u: i for i, u in enumerate(UNITS)}
    clock = np.zeros((len(body), 3), dtype=np.int64)  # per instruction: what it has seen
    last = np.zeros((3, 3), dtype=np.int64)
    position = {}
    count = dict.fromkeys(UNITS, 0)
    pushes: dict[tuple[str, str], list[int]] = {}
    pops: dict[tuple[str, str], int] = {}
    upstream = {"load": None, "compute": "load", "store": "compute"}
    downstream = {"load": "compute", "compute": "store", "store": None}
    for index in order:
        insn = body[index]
        u = insn.unit
        vc = last[units[u]].copy()
        for flag, channel in (("pop_prev", (upstream[u], u)), ("pop_next", (downstream[u], u))):
            if getattr(insn, flag):
                k = pops.get(channel, 0)
                pops[channel] = k + 1
                vc = np.maximum(vc, clock[pushes[channel][k]])
        count[u] += 1
        position[index] = count[u]
        vc[units[u]] = count[u]
        clock[index] = vc
        last[units[u]] = vc
        for flag, channel in (("push_prev", (u, upstream[u])), ("push_next", (u, downstream[u]))):
            if getattr(insn, flag):
                pushes.setdefault(channel, []).append(index)

    unit_of = [units[insn.unit] for insn in body]

    def before(x: int, y: int) -> bool:
        return clock[y][unit_of[x]] >= position[x]

    # FastTrack-style: in token order, each elementary range remembers its last writer and its
    # last reader per unit; a later access needs happens-before with those alone (earlier
    # ones are ordered before them, or were reported), so the check is linear, not pairwise.
    footprints = {i: _footprint(g, body[i]) for i in order}
    points = {space: set() for space in _SPACES}
    for fp in footprints.values():
        for space, lo, hi, _ in fp:
            if hi > lo:
                points[space].update((lo, hi))
    edges = {space: sorted(p) for space, p in points.items()}
    index_of = {space: {x: i for i, x in enumerate(e)} for space, e in edges.items()}
    # plain lists: most ranges span one or two elementary ranges, where numpy only costs
    last_write = {space: [-1] * max(len(e) - 1, 0) for space, e in edges.items()}
    last_read = {space: [[-1] * len(w) for _ in range(3)] for space, w in last_write.items()}

    def conflict(space, lo, hi, i0, owners, y):
        for x in set(owners) if len(owners) > 1 else owners:
            if x < 0 or x == y or unit_of[x] == unit_of[y] or before(x, y):
                continue
            where = [i for i, o in enumerate(owners) if o == x]
            lo2, hi2 = edges[space][i0 + where[0]], edges[space][i0 + where[-1] + 1]
            a, b = sorted((x, y))
            raise ProgramError(
                f"{body[b].opcode.name} and instruction {a} ({body[a].opcode.name}) "
                f"touch the same {_SPACES[space]} {max(lo, lo2)}..{min(hi, hi2) - 1} with "
                "no token between them",
                ErrorCode.HAZARD,
                b,
            )

    for y in order:
        spans = []
        uy = unit_of[y]
        for space, lo, hi, is_write in footprints[y]:
            if hi <= lo:
                continue
            i0, i1 = index_of[space][lo], index_of[space][hi]
            spans.append((space, i0, i1, is_write))
            conflict(space, lo, hi, i0, last_write[space][i0:i1], y)
            if is_write:
                for u in range(3):
                    if u != uy:
                        conflict(space, lo, hi, i0, last_read[space][u][i0:i1], y)
        for space, i0, i1, is_write in spans:
            if is_write:
                last_write[space][i0:i1] = [y] * (i1 - i0)
                for u in range(3):
                    last_read[space][u][i0:i1] = [-1] * (i1 - i0)
        for space, i0, i1, is_write in spans:
            if not is_write:
                last_read[space][uy][i0:i1] = [y] * (i1 - i0)
    # reads of rows no instruction wrote before (in token order; the host fills DRAM)
    written = {"sp": np.zeros(g.sp_rows, bool), "acc": np.zeros(g.acc_rows, bool)}
    first_prog, end_prog = stream
    for index in order:
        for space, lo, hi, is_write in footprints[index]:
            if space == "dram":
                if is_write and lo < end_prog and first_prog < hi:
                    raise ProgramError(
                        "STORE writes over the program's own instruction words",
                        ErrorCode.HAZARD,
                        index,
                    )
                continue
            if not is_write and not written[space][lo:hi].all():
                row = lo + int(np.argmin(written[space][lo:hi]))
                raise ProgramError(
                    f"{body[index].opcode.name} reads {_SPACES[space][:-1]} {row}, which no "
                    "earlier instruction wrote",
                    ErrorCode.HAZARD,
                    index,
                )
        for space, lo, hi, is_write in footprints[index]:
            if is_write and space != "dram":
                written[space][lo:hi] = True


_SPACES = {"sp": "scratchpad rows", "acc": "accumulator rows", "dram": "DRAM bytes"}  # plurals


def _rows(g: Geometry, mem: int, start: int, count: int, what: str) -> None:
    limit, name = (g.sp_rows, "scratchpad") if mem == 0 else (g.acc_rows, "accumulator memory")
    code = ErrorCode.SCRATCHPAD_RANGE if mem == 0 else ErrorCode.ACCUMULATOR_RANGE
    if start + count > limit:
        raise ProgramError(
            f"{what} rows {start}..{start + count - 1} are outside the {name} ({limit} rows)",
            code,
        )


def _positive(insn: Instruction, *names: str) -> None:
    for name in names:
        if insn.fields.get(name, 0) < 1:
            raise ProgramError(f"{insn.opcode.name}.{name} must be at least 1, not 0")


def _check_insn(g: Geometry, insn: Instruction) -> None:
    op = insn.opcode
    unit = insn.unit
    if unit == "load" and (insn.pop_prev or insn.push_prev):
        raise ProgramError("the load unit has no upstream unit: pop_prev/push_prev must be 0")
    if unit == "store" and (insn.pop_next or insn.push_next):
        raise ProgramError("the store unit has no downstream unit: pop_next/push_next must be 0")
    if op == Opcode.HALT and any(getattr(insn, f) for f in TOKEN_FLAGS):
        raise ProgramError("HALT carries no tokens")
    if op in (Opcode.LOAD, Opcode.STORE):
        _positive(insn, "y_size", "x_size")
        mem = insn.mem
        if mem == 0 and insn.elem:
            raise ProgramError(f"{op.name}.elem must be 0 for the scratchpad (raw bytes)")
        _rows(g, mem, insn.sram_addr, insn.y_size * insn.x_size, op.name)
        row_bytes = g.row_bytes(mem, insn.elem) * insn.x_size
        if row_bytes // g.data_bytes > 0xFFFF:
            raise ProgramError(
                f"{op.name} moves {row_bytes // g.data_bytes} beats a DRAM row; at most 65535"
            )
        for name in ("dram_addr", "dram_stride"):
            if getattr(insn, name) % g.data_bytes:
                raise ProgramError(
                    f"{op.name}.{name} = {getattr(insn, name):#x} is not a multiple of the "
                    f"{g.data_bytes}-byte bus",
                    ErrorCode.DRAM_RANGE,
                )
        last = insn.dram_addr + (insn.y_size - 1) * insn.dram_stride + row_bytes
        if last > g.dram_bytes:
            raise ProgramError(
                f"{op.name} reaches DRAM byte {last - 1:#x}, "
                f"beyond the {g.dram_bytes:#x}-byte DRAM",
                ErrorCode.DRAM_RANGE,
            )
    elif op == Opcode.GEMM:
        _check_gemm(g, insn)
    elif op == Opcode.LUT_GEMM:
        if not g.has_lut:
            raise ProgramError("LUT_GEMM on a configuration without a LUT core")
        _positive(insn, "m", "k")
        if insn.mode >= len(g.lut_modes):
            raise ProgramError(f"LUT mode {insn.mode} is not configured ({len(g.lut_modes)} modes)")
        if insn.m > g.lut_tile_m:
            raise ProgramError(f"LUT_GEMM.m = {insn.m} exceeds tile_m = {g.lut_tile_m}")
        if insn.k > g.lut_max_groups(insn.mode):
            raise ProgramError(
                f"LUT_GEMM.k = {insn.k} groups could saturate the "
                f"{g.lut_acc_bits}-bit accumulators (at most {g.lut_max_groups(insn.mode)})"
            )
        _rows(g, 0, insn.a_addr, insn.k, "LUT_GEMM activation")
        _rows(g, 0, insn.w_addr, insn.k * g.lut_planes(insn.mode), "LUT_GEMM weight")
        _rows(g, 1, insn.acc_addr, insn.m, "LUT_GEMM result")
    elif op == Opcode.POST:
        _positive(insn, "rows")
        out_min, out_max = (-128, 127) if insn.out_signed else (0, 255)
        if not out_min <= insn.lo <= insn.hi <= out_max:
            raise ProgramError(
                f"POST clamp [{insn.lo}, {insn.hi}] is not within [{out_min}, {out_max}]"
            )
        _rows(g, 1, insn.acc_addr, insn.rows, "POST input")
        _rows(g, 1, insn.param_addr, 3, "POST parameter")
        _rows(g, 0, insn.out_addr, insn.rows, "POST output")
        if insn.residual:
            _rows(g, 0, insn.res_addr, insn.rows, "POST residual")


def _check_gemm(g: Geometry, insn: Instruction) -> None:
    if not g.has_array:
        raise ProgramError("GEMM on a configuration without a systolic array")
    _positive(insn, "m", "k")
    if insn.mode >= len(g.array_modes):
        raise ProgramError(f"array mode {insn.mode} is not configured ({len(g.array_modes)} modes)")
    spec = g.array_modes[insn.mode]
    os = insn.dataflow == 1
    if g.dataflow != "both" and g.dataflow != ("os" if os else "ws"):
        raise ProgramError(
            f"the array is {g.dataflow}-only; this GEMM asks for {'os' if os else 'ws'}"
        )
    tiles = g.gemm_tiles(insn.dataflow, insn.m, insn.k)
    if os:
        if insn.k > g.max_steps(insn.mode):
            raise ProgramError(
                f"{spec.name} accumulators hold {g.max_steps(insn.mode)} steps exactly; "
                f"GEMM.k = {insn.k} (split K, or raise array.max_k or acc_bits)"
            )
        _rows(g, 0, insn.a_addr, tiles * insn.k, "GEMM activation")
        _rows(g, 0, insn.w_addr, insn.k, "GEMM weight")
        if spec.block:
            _rows(g, 0, insn.scale_addr, (tiles + 1) * -(-insn.k // spec.block), "GEMM scale")
    else:
        if spec.block:
            raise ProgramError(f"{spec.name} is an MX mode: it runs output-stationary only")
        if insn.k % g.rows:
            raise ProgramError(
                f"weight-stationary GEMM.k must be a multiple of the array's {g.rows} rows, "
                f"not {insn.k}"
            )
        if g.rows > g.max_steps(insn.mode):
            raise ProgramError(
                f"{spec.name}: a weight-stationary column of {g.rows} rows could saturate its "
                f"accumulators (they hold {g.max_steps(insn.mode)} steps); use output-stationary"
            )
        _rows(g, 0, insn.w_addr, insn.k, "GEMM weight")
        _rows(g, 0, insn.a_addr, tiles * insn.m, "GEMM activation")
    _rows(g, 1, insn.acc_addr, insn.m, "GEMM result")


# --- the builder ---------------------------------------------------------------------------


class ProgramBuilder:
    """Write a Program by hand: allocate DRAM, put constants, declare tensors, emit
    instructions (token flags as keyword arguments), ``build()``.

    >>> b = ProgramBuilder(cfg)
    >>> x = b.input("x", (4, 4), "int8")               # row-major, one row per scratchpad row
    >>> b.load(mem=0, sram_addr=0, dram_addr=x.address, y_size=4, x_size=1, dram_stride=...)
    """

    def __init__(self, config: qconfig.AcceleratorConfig, *, dram_base: int = 0x1000):
        self.config = config
        self.geometry = Geometry.of(config)
        self._next = dram_base
        self._segments: list[tuple[int, bytes]] = []
        self._insns: list[Instruction] = []
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.notes: dict = {}

    def alloc(self, nbytes: int, align: int | None = None) -> int:
        """A fresh DRAM region of ``nbytes`` bytes, aligned to the bus (or ``align``)."""
        align = max(align or 1, self.geometry.data_bytes)
        addr = -(-self._next // align) * align
        self._next = addr + max(nbytes, 1)
        if self._next > self.geometry.dram_bytes:
            raise ProgramError(
                f"the program needs more than the {self.geometry.dram_bytes}-byte DRAM",
                ErrorCode.DRAM_RANGE,
            )
        return addr

    def constant(self, data: bytes, align: int | None = None) -> int:
        """Place ``data`` in DRAM; return its address."""
        addr = self.alloc(len(data), align)
        self._segments.append((addr, bytes(data)))
        return addr

    def tensor(self, spec: TensorSpec, *, output: bool = False) -> TensorSpec:
        (self.outputs if output else self.inputs).append(spec)
        return spec

    def emit(self, op: Opcode, **kw) -> Instruction:
        flags = {f: bool(kw.pop(f, False)) for f in TOKEN_FLAGS}
        op = Opcode(op)
        names = [n for n, _ in self.geometry.layout(op) if n != "opcode" and n not in TOKEN_FLAGS]
        fields = {n: kw.pop(n, 0) for n in names} | kw  # omitted fields are 0; unknown ones stay
        insn = Instruction(op, fields, **flags)
        self._insns.append(insn)
        return insn

    def load(self, **kw) -> Instruction:
        return self.emit(Opcode.LOAD, **kw)

    def store(self, **kw) -> Instruction:
        return self.emit(Opcode.STORE, **kw)

    def gemm(self, **kw) -> Instruction:
        return self.emit(Opcode.GEMM, **kw)

    def lut_gemm(self, **kw) -> Instruction:
        return self.emit(Opcode.LUT_GEMM, **kw)

    def post(self, **kw) -> Instruction:
        return self.emit(Opcode.POST, **kw)

    def build(self, *, check: bool = True) -> Program:
        """The Program: a HALT appended, the instructions encoded into DRAM, then checked."""
        if not self._insns or self._insns[-1].opcode != Opcode.HALT:
            self.emit(Opcode.HALT)
        g = self.geometry
        words = []
        for i, insn in enumerate(self._insns):
            try:
                words.append(encode(g, insn).to_bytes(g.insn_bytes, "little"))
            except ValueError as e:
                raise ProgramError(str(e), ErrorCode.ILLEGAL_FIELD, i) from None
        stream = b"".join(words)
        prog_addr = self.constant(stream, align=g.insn_bytes)
        program = Program(
            self.config,
            list(self._insns),
            list(self._segments),
            list(self.inputs),
            list(self.outputs),
            prog_addr,
            dict(self.notes),
        )
        if check:
            check_program(program)
        return program

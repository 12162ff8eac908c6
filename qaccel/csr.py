"""The accelerator's control and status registers, described once, as data.

``MAP`` is the register map behind the AXI4-Lite slave (``hw.csr.ControlRegisters``): 32-bit
registers at byte offsets that are multiples of 4. Everything else is generated from it, so the
pieces cannot disagree:

- the host driver's view: ``OFFSETS`` (register name -> byte offset), ``field``, ``extract`` and
  ``insert`` for bit fields, ``counter_offsets`` and ``join64`` for the 64-bit counters, and
  ``c_header`` for C drivers;
- the datasheet: ``markdown_table`` (one row per register) and ``datasheet`` (the table with
  the access kinds and the counter reading rule);
- the hardware: ``hw.csr.ControlRegisters`` decodes, stores and drives ports from the same map.

Access kinds (``Access``): ``RO`` is driven by the hardware (writes answer SLVERR); ``RW`` is
written by the host and read by the hardware; ``W1P`` (write 1 to pulse) turns each field written
as 1 into a one-cycle pulse toward the hardware and always reads as 0.

Performance counters are 64 bits wide, in ``COUNTERS``; each is a ``<NAME>_LO`` / ``<NAME>_HI``
register pair. Reading ``_LO`` latches the upper half, and ``_HI`` returns that latched half, so
a LO-then-HI read is one consistent 64-bit value even while the counter runs. Adding a counter
is one line in ``COUNTERS``.
"""

from __future__ import annotations

import enum
import re
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = [
    "COUNTERS",
    "COUNTER_BASE",
    "ID_VALUE",
    "ISA_VERSION",
    "MAP",
    "OFFSETS",
    "REGISTERS",
    "REGISTER_BITS",
    "Access",
    "Counter",
    "Field",
    "Register",
    "RegisterMap",
    "c_header",
    "counter_offsets",
    "datasheet",
    "extract",
    "field",
    "insert",
    "join64",
    "markdown_table",
    "offset",
]

REGISTER_BITS = 32
ID_VALUE = int.from_bytes(b"QACC", "big")  # 0x51414343: reads as "QACC" in a hex dump
# The instruction set's version; it must equal qaccel.isa.ISA_VERSION, which is defined there.
ISA_VERSION = 2
COUNTER_BASE = 0x20  # the first counter's _LO register; the pairs follow, 8 bytes apart

_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")


class Access(enum.Enum):
    """Who writes a register, and what a write does."""

    RO = "RO"
    RW = "RW"
    W1P = "W1P"

    @property
    def description(self) -> str:
        return _ACCESS_TEXT[self]


_ACCESS_TEXT = {
    Access.RO: "read-only: driven by the hardware; a write answers SLVERR and changes nothing",
    Access.RW: "read-write: written by the host, read back as written, used by the hardware",
    Access.W1P: "write 1 to pulse: each field written as 1 becomes a one-cycle pulse; reads as 0",
}


def _check_name(kind: str, name: object) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{kind} name must be upper case letters, digits and _, starting with a letter, "
            f"not {name!r}"
        )


def _check_description(kind: str, name: str, description: object) -> None:
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"{kind} {name} needs a description, not {description!r}")
    if "\n" in description:
        raise ValueError(f"{kind} {name}: the description must be one line, not {description!r}")


@dataclass(frozen=True)
class Field:
    """Bits ``lsb``..``msb`` (inclusive) of a register."""

    name: str
    lsb: int
    msb: int
    description: str

    def __post_init__(self):
        _check_name("field", self.name)
        if not (isinstance(self.lsb, int) and isinstance(self.msb, int)) or not (
            0 <= self.lsb <= self.msb < REGISTER_BITS
        ):
            raise ValueError(
                f"field {self.name}: bits must satisfy 0 <= lsb <= msb < {REGISTER_BITS}, "
                f"not lsb={self.lsb!r}, msb={self.msb!r}"
            )
        _check_description("field", self.name, self.description)

    @property
    def width(self) -> int:
        return self.msb - self.lsb + 1

    @property
    def mask(self) -> int:
        """The field's bits in place, in a register word."""
        return ((1 << self.width) - 1) << self.lsb

    @property
    def bits(self) -> str:
        """The bit range as a datasheet writes it: ``[0]`` or ``[15:8]``."""
        return f"[{self.lsb}]" if self.width == 1 else f"[{self.msb}:{self.lsb}]"

    def extract(self, word: int) -> int:
        """The field's value in a register word."""
        _check_word(word)
        return (word & self.mask) >> self.lsb

    def insert(self, word: int, value: int) -> int:
        """``word`` with the field set to ``value``; the other bits are kept."""
        _check_word(word)
        if not isinstance(value, int) or not 0 <= value < 1 << self.width:
            raise ValueError(
                f"field {self.name} holds {self.width} bit(s): 0..{(1 << self.width) - 1}, "
                f"not {value!r}"
            )
        return (word & ~self.mask) | (value << self.lsb)


def _check_word(word: object) -> None:
    if not isinstance(word, int) or not 0 <= word < 1 << REGISTER_BITS:
        raise ValueError(f"a register word is an integer in 0..2**{REGISTER_BITS}-1, not {word!r}")


@dataclass(frozen=True)
class Register:
    """One 32-bit register. ``constant``: an RO register that always reads its ``reset``."""

    name: str
    offset: int
    access: Access
    reset: int
    description: str
    fields: tuple[Field, ...] = ()
    constant: bool = False

    def __post_init__(self):
        _check_name("register", self.name)
        if not isinstance(self.offset, int) or self.offset < 0 or self.offset % 4:
            raise ValueError(
                f"register {self.name}: the offset must be a non-negative multiple of 4, "
                f"not {self.offset!r}"
            )
        if not isinstance(self.access, Access):
            raise ValueError(f"register {self.name}: access must be an Access, not {self.access!r}")
        _check_description("register", self.name, self.description)
        if not isinstance(self.reset, int) or not 0 <= self.reset < 1 << REGISTER_BITS:
            raise ValueError(
                f"register {self.name}: the reset value must fit {REGISTER_BITS} bits, "
                f"not {self.reset!r}"
            )
        self._check_fields()
        if self.constant and self.access is not Access.RO:
            raise ValueError(
                f"register {self.name}: only an RO register can be constant, not {self.access.name}"
            )
        if self.access is Access.W1P:
            if not self.fields or any(f.width != 1 for f in self.fields):
                raise ValueError(
                    f"register {self.name}: a W1P register needs fields of one bit each, "
                    f"not {[f.bits for f in self.fields]}"
                )
            if self.reset:
                raise ValueError(
                    f"register {self.name}: a W1P register reads as 0, so its reset is 0, "
                    f"not {self.reset:#x}"
                )

    def _check_fields(self):
        if not isinstance(self.fields, tuple):
            raise ValueError(f"register {self.name}: fields must be a tuple, not {self.fields!r}")
        used, names = 0, set()
        for f in self.fields:
            if f.name in names:
                raise ValueError(f"register {self.name}: two fields are named {f.name}")
            if used & f.mask:
                raise ValueError(f"register {self.name}: field {f.name} {f.bits} overlaps another")
            used |= f.mask
            names.add(f.name)
        if self.fields and self.reset & ~used:
            raise ValueError(
                f"register {self.name}: reset {self.reset:#010x} sets bits outside its fields"
            )

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        known = ", ".join(f.name for f in self.fields) or "none"
        raise KeyError(f"register {self.name} has no field {name!r}; its fields: {known}")


@dataclass(frozen=True)
class Counter:
    """A 64-bit performance counter, read as the ``<name>_LO`` / ``<name>_HI`` pair."""

    name: str
    description: str

    def __post_init__(self):
        _check_name("counter", self.name)
        _check_description("counter", self.name, self.description)

    @property
    def lo(self) -> str:
        return f"{self.name}_LO"

    @property
    def hi(self) -> str:
        return f"{self.name}_HI"


def counter_registers(counters: tuple[Counter, ...], base: int) -> tuple[Register, ...]:
    """The LO/HI register pairs of ``counters``, 8 bytes apart from ``base``."""
    registers = []
    for i, c in enumerate(counters):
        registers += [
            Register(
                c.lo,
                base + 8 * i,
                Access.RO,
                0,
                f"{c.description}: bits 31..0 (reading this latches bits 63..32 for {c.hi})",
            ),
            Register(
                c.hi,
                base + 8 * i + 4,
                Access.RO,
                0,
                f"{c.description}: bits 63..32, as latched by the last read of {c.lo}",
            ),
        ]
    return tuple(registers)


@dataclass(frozen=True)
class RegisterMap:
    """Registers by offset, with the counters whose LO/HI pairs are among them."""

    registers: tuple[Register, ...]
    counters: tuple[Counter, ...] = ()

    @classmethod
    def with_counters(
        cls, registers: tuple[Register, ...], counters: tuple[Counter, ...], base: int
    ) -> RegisterMap:
        """``registers`` followed by the LO/HI pair of every counter from ``base`` on."""
        return cls((*registers, *counter_registers(counters, base)), counters)

    def __post_init__(self):
        if not self.registers:
            raise ValueError("a register map needs at least one register, not none")
        by_name, by_offset = {}, {}
        for reg in self.registers:
            if reg.name in by_name:
                raise ValueError(f"two registers are named {reg.name}")
            if reg.offset in by_offset:
                raise ValueError(
                    f"registers {by_offset[reg.offset].name} and {reg.name} overlap at offset "
                    f"{reg.offset:#x}"
                )
            by_name[reg.name], by_offset[reg.offset] = reg, reg
        for c in self.counters:
            lo, hi = by_name.get(c.lo), by_name.get(c.hi)
            if lo is None or hi is None or hi.offset != lo.offset + 4:
                raise ValueError(
                    f"counter {c.name} needs registers {c.lo} and {c.hi}, 4 bytes apart; "
                    f"found {lo and hex(lo.offset)} and {hi and hex(hi.offset)}"
                )
            if lo.access is not Access.RO or hi.access is not Access.RO:
                raise ValueError(f"counter {c.name}: {c.lo} and {c.hi} must be RO")
        if len({c.name for c in self.counters}) != len(self.counters):
            raise ValueError(f"two counters share a name in {[c.name for c in self.counters]}")
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_offset", by_offset)

    def __getitem__(self, name: str) -> Register:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(
                f"no register named {name!r}; known: {', '.join(self._by_name)}"
            ) from None

    def __iter__(self) -> Iterator[Register]:
        return iter(sorted(self.registers, key=lambda r: r.offset))

    def __len__(self) -> int:
        return len(self.registers)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def at(self, offset: int) -> Register | None:
        """The register at byte ``offset``, or None where nothing is mapped."""
        return self._by_offset.get(offset)

    @property
    def offsets(self) -> Mapping[str, int]:
        return types.MappingProxyType({r.name: r.offset for r in self})

    @property
    def span(self) -> int:
        """Bytes from offset 0 to the end of the last register."""
        return max(r.offset for r in self.registers) + 4

    def counter(self, name: str) -> Counter:
        for c in self.counters:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.counters)
        raise KeyError(f"no counter named {name!r}; known: {known}")


# ---- the map ----------------------------------------------------------------------------------

_CTRL_FIELDS = (
    Field("START", 0, 0, "write 1 to start a run from PROG_ADDR; ignored while BUSY"),
    Field(
        "CLEAR",
        1,
        1,
        "write 1 to clear DONE, ERROR, ERROR_CODE, ERROR_INSN and zero the counters;"
        " ignored while BUSY",
    ),
)
_STATUS_FIELDS = (
    Field("BUSY", 0, 0, "a run is in progress"),
    Field("DONE", 1, 1, "a run has ended (with or without error); cleared by START or CLEAR"),
    Field("ERROR", 2, 2, "the last run stopped on a fault (ERROR_CODE != 0); cleared likewise"),
    Field("ERROR_CODE", 8, 15, "why the last run stopped (qaccel.isa.ErrorCode); 0: no error"),
)

REGISTERS = (
    Register("ID", 0x00, Access.RO, ID_VALUE, 'identifies the block: ASCII "QACC"', constant=True),
    Register("VERSION", 0x04, Access.RO, ISA_VERSION, "instruction set version", constant=True),
    Register("CTRL", 0x08, Access.W1P, 0, "commands", _CTRL_FIELDS),
    Register("STATUS", 0x0C, Access.RO, 0, "the state of the run", _STATUS_FIELDS),
    Register(
        "ERROR_INSN",
        0x10,
        Access.RO,
        0,
        "index (from 0) of the instruction that faulted; 0 without a fault",
    ),
    Register("PROG_ADDR", 0x14, Access.RW, 0, "DRAM byte address of the first instruction word"),
    Register(
        "PROG_LEN",
        0x18,
        Access.RW,
        0,
        "most instructions a run may fetch; fetching this many without HALT is an error",
    ),
)

# Counted across runs until CLEAR: the controller holds them and zeroes them on the clear pulse.
COUNTERS = (
    Counter("CYCLES", "cycles in runs, each from its START to its end"),
    Counter("LOAD_BUSY", "cycles the load unit spends executing an instruction"),
    Counter("COMPUTE_BUSY", "cycles the compute unit spends executing an instruction"),
    Counter("STORE_BUSY", "cycles the store unit spends executing an instruction"),
    Counter("LOAD_STALL", "cycles the load unit holds an instruction but waits for a token"),
    Counter("COMPUTE_STALL", "cycles the compute unit holds an instruction but waits for a token"),
    Counter("STORE_STALL", "cycles the store unit holds an instruction but waits for a token"),
    Counter("DRAM_READ_BYTES", "bytes read from DRAM"),
    Counter("DRAM_WRITE_BYTES", "bytes written to DRAM"),
    Counter("INSNS", "instructions retired"),
    Counter("SATURATIONS", "integer results clamped (accumulator and output-format saturation)"),
    Counter("INVALID", "results from a NaN/inf/NaR operand or an out-of-window MX block"),
)

MAP = RegisterMap.with_counters(REGISTERS, COUNTERS, COUNTER_BASE)
OFFSETS: Mapping[str, int] = MAP.offsets


# ---- the host driver's helpers -----------------------------------------------------------------


def offset(register: str) -> int:
    """The byte offset of ``register`` in ``MAP``."""
    return MAP[register].offset


def field(register: str, name: str) -> Field:
    """Field ``name`` of ``register`` in ``MAP``."""
    return MAP[register].field(name)


def extract(register: str, name: str, word: int) -> int:
    """The value of field ``name`` in a word read from ``register``."""
    return field(register, name).extract(word)


def insert(register: str, name: str, word: int, value: int) -> int:
    """``word`` with field ``name`` of ``register`` set to ``value``."""
    return field(register, name).insert(word, value)


def counter_offsets(name: str) -> tuple[int, int]:
    """The (LO, HI) byte offsets of counter ``name``: read LO first, then HI."""
    c = MAP.counter(name)
    return MAP[c.lo].offset, MAP[c.hi].offset


def join64(lo: int, hi: int) -> int:
    """The 64-bit counter value from its LO and HI words."""
    _check_word(lo)
    _check_word(hi)
    return hi << REGISTER_BITS | lo


# ---- generated documents -----------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(regmap: RegisterMap = MAP) -> str:
    """One Markdown table row per register: offset, name, access, reset, fields, description."""
    digits = max(3, len(f"{regmap.span - 1:x}"))
    lines = [
        "| Offset | Name | Access | Reset | Fields | Description |",
        "|---|---|---|---|---|---|",
    ]
    for reg in regmap:
        fields = "<br>".join(
            _cell(f"{f.bits} {f.name}: {f.description}")
            for f in sorted(reg.fields, key=lambda f: f.lsb)
        )
        lines.append(
            f"| 0x{reg.offset:0{digits}X} | {reg.name} | {reg.access.value} | "
            f"0x{reg.reset:08X} | {fields} | {_cell(reg.description)} |"
        )
    return "\n".join(lines) + "\n"


def datasheet(regmap: RegisterMap = MAP) -> str:
    """The registers' datasheet section: the table, the access kinds and the bus rules."""
    access = "\n".join(f"- **{a.value}**: {a.description}." for a in Access)
    pairs = ", ".join(c.name for c in regmap.counters)
    return (
        "## Control and status registers (AXI4-Lite)\n\n"
        f"32-bit registers; byte offsets from the slave's base. {len(regmap)} registers, "
        f"{regmap.span} bytes.\n\n"
        f"{markdown_table(regmap)}\n"
        f"Access kinds:\n\n{access}\n\n"
        "Reads of unmapped offsets, and writes to unmapped or RO offsets, answer SLVERR (resp 2)"
        " and change nothing. Writes apply the byte lanes selected by wstrb (a command bit acts"
        " only when its lane is written). The two low address bits are ignored; awprot and"
        " arprot are accepted and ignored.\n\n"
        f"64-bit counters ({pairs}): read `_LO` first, then `_HI`. Reading `_LO` latches the"
        " upper half, which `_HI` returns, so the pair is one consistent value while the counter"
        " runs. They count across runs until CLEAR.\n"
    )


def c_header(regmap: RegisterMap = MAP, prefix: str = "QACC") -> str:
    """``#define``s for a C driver: offsets, field shifts and masks, reset values."""
    _check_name("prefix", prefix)
    guard = f"{prefix}_CSR_H"
    lines = [
        "/* Generated from qaccel.csr: the accelerator's control and status registers. */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
    ]
    for reg in regmap:
        comment = reg.description.replace("*/", "* /")
        lines.append(f"#define {prefix}_{reg.name} 0x{reg.offset:03X}u /* {comment} */")
        if reg.constant:
            lines.append(f"#define {prefix}_{reg.name}_VALUE 0x{reg.reset:08X}u")
        for f in reg.fields:
            lines.append(f"#define {prefix}_{reg.name}_{f.name}_SHIFT {f.lsb}u")
            lines.append(f"#define {prefix}_{reg.name}_{f.name}_MASK 0x{f.mask:08X}u")
    lines += ["", f"#endif /* {guard} */", ""]
    return "\n".join(lines)

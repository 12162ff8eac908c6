"""The accelerator's configuration: frozen dataclasses loaded from TOML, validated, dumped back.

One ``AcceleratorConfig`` feeds every stage (hardware generators, compiler, simulator,
synthesis). Each dataclass checks itself in ``__post_init__``; the loader adds the TOML key path
to every message, so an error always names the key (``array.rows: must be ...``).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from qaccel import formats, modes

__all__ = [
    "AcceleratorConfig",
    "ArrayConfig",
    "ConfigError",
    "DramConfig",
    "EnergyConfig",
    "FormatPair",
    "FrozenTable",
    "LutCoreConfig",
    "MemoryConfig",
    "config_from_dict",
    "dump_toml",
    "load_config",
]

DATAFLOWS = ("ws", "os", "both")
LUT_ACTIVATIONS = ("int8", "uint8")
MAX_ARRAY_SIDE = 256
# Per-byte energies (pJ) from M. Horowitz, "Computing's energy problem (and what we can do about
# it)", ISSCC 2014, 45 nm: a 64-bit read of a 32 KB SRAM costs 20 pJ (8 KB: 10 pJ, 1 MB: 100 pJ),
# a 64-bit DRAM access 1.3-2.6 nJ (the low end here).
SRAM_BYTE_PJ = 20.0 / 8
DRAM_BYTE_PJ = 1300.0 / 8


class ConfigError(ValueError):
    """A configuration problem; ``key`` is the dotted TOML path of the offending value."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key, self.reason = key, reason

    def under(self, prefix: str) -> ConfigError:
        return ConfigError(f"{prefix}.{self.key}" if self.key else prefix, self.reason)


def _check_int(key: str, value: int, lo: int, hi: int | None = None) -> None:
    if value < lo or (hi is not None and value > hi):
        span = f"at least {lo}" if hi is None else f"in {lo}..{hi}"
        raise ConfigError(key, f"must be {span}, not {value}")


def _check_power_of_two(key: str, value: int) -> None:
    if value < 1 or value & (value - 1):
        raise ConfigError(key, f"must be a power of two, not {value}")


def _check_pj(key: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(key, f"must be a finite number of picojoules >= 0, not {value}")


class FrozenTable(Mapping[str, float]):
    """A read-only, hashable table of names to numbers (a TOML table inside a frozen config),
    keys sorted so that equal tables dump to the same TOML."""

    def __init__(self, items: Mapping[str, float] | None = None):
        self._items = dict(sorted((items or {}).items()))

    def __getitem__(self, key: str) -> float:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return f"FrozenTable({self._items!r})"


@dataclass(frozen=True)
class FormatPair:
    """A (weight, activation) pair of ``qaccel.formats`` names the compute units support."""

    weight: str
    activation: str

    def __post_init__(self):
        for key in ("weight", "activation"):
            name = getattr(self, key)
            if name in formats.MX_FORMATS:
                continue
            if name not in formats.FORMATS:
                raise ConfigError(
                    key, f"unknown number format {name!r} (not in FORMATS or MX_FORMATS)"
                )
            if formats.FORMATS[name].kind == "scale":
                raise ConfigError(key, f"{name!r} is a block scale, not an operand format")

    def __str__(self) -> str:
        return f"{self.weight}*{self.activation}"

    @property
    def is_mx(self) -> bool:
        return self.weight in formats.MX_FORMATS or self.activation in formats.MX_FORMATS

    @property
    def is_integer(self) -> bool:
        if self.is_mx:
            return False
        kinds = {formats.FORMATS[n].kind for n in (self.weight, self.activation)}
        return kinds <= {"int", "binary", "ternary"}


@dataclass(frozen=True)
class ArrayConfig:
    """The systolic array: ``rows`` x ``cols`` processing elements."""

    rows: int
    cols: int
    modes: tuple[FormatPair, ...]
    dataflow: str = "both"
    acc_bits: int = 32
    # MX modes: the combined block-scale exponents their accumulators hold exactly (qaccel.modes)
    mx_scale_range: tuple[int, ...] = modes.MX_SCALE_RANGE
    # The longest K (in steps) one GEMM instruction may carry; float accumulators are sized for
    # it. 0: ``rows``.
    max_k: int = 0
    # A register between each PE's multiplier and its accumulating adder, and in arrays with
    # float modes one after the product's shift: one or two more cycles of latency per GEMM
    # (qaccel.modes.pe_stages), a shorter critical path (a higher clock).
    pipelined: bool = True

    def __post_init__(self):
        _check_int("rows", self.rows, 1, MAX_ARRAY_SIDE)
        scale_range = self.mx_scale_range
        if len(scale_range) != 2 or not -254 <= scale_range[0] <= scale_range[1] <= 254:
            raise ConfigError(
                "mx_scale_range",
                f"must be [lo, hi] with -254 <= lo <= hi <= 254, not {list(self.mx_scale_range)}",
            )
        _check_int("cols", self.cols, 1, MAX_ARRAY_SIDE)
        if self.dataflow not in DATAFLOWS:
            raise ConfigError(
                "dataflow", f"must be one of {', '.join(DATAFLOWS)}, not {self.dataflow!r}"
            )
        if not self.modes:
            raise ConfigError("modes", "must list at least one (weight, activation) pair")
        seen = set()
        for i, mode in enumerate(self.modes):
            if mode in seen:
                raise ConfigError(f"modes[{i}]", f"{mode} is listed twice")
            seen.add(mode)
            try:  # the PE supports this pair (qaccel.modes says why not)
                modes.mode_spec(
                    mode.weight,
                    mode.activation,
                    rows=self.rows,
                    acc_bits=32,
                    mx_scale_range=self.mx_scale_range,
                )
            except ValueError as e:
                raise ConfigError(f"modes[{i}]", f"{mode}: {e}") from None
            if mode.is_mx and self.dataflow == "ws":
                raise ConfigError(
                    f"modes[{i}]",
                    f"{mode}: MX block scales need the output-stationary dataflow "
                    '(dataflow = "os" or "both")',
                )
        _check_int("acc_bits", self.acc_bits, 8, 64)
        _check_int("max_k", self.max_k, 0, 1 << 16)
        # Integer modes accumulate in acc_bits; it must at least hold one exact product.
        for i, mode in enumerate(self.modes):
            if mode.is_integer:
                need = formats.accumulator_format(
                    formats.FORMATS[mode.weight], formats.FORMATS[mode.activation], 1
                ).width
                if self.acc_bits < need:
                    raise ConfigError(
                        "acc_bits",
                        f"{self.acc_bits} bits cannot hold one "
                        f"{mode} product (modes[{i}] needs {need})",
                    )


@dataclass(frozen=True)
class LutCoreConfig:
    """The LUT tensor core: groups of ``group`` activations, an elongated ``tile_m`` x
    ``tile_n`` tile, bit-serial over 1..4 weight bits."""

    group: int = 4
    tile_m: int = 2
    tile_n: int = 64
    weight_bits: tuple[int, ...] = (1, 2, 3, 4)
    ternary: bool = True
    activation: str = "int8"
    acc_bits: int = 32

    def __post_init__(self):
        _check_int("group", self.group, 2, 8)
        _check_int("tile_m", self.tile_m, 1, MAX_ARRAY_SIDE)
        _check_int("tile_n", self.tile_n, 1, 1024)
        if not self.weight_bits:
            raise ConfigError("weight_bits", "must list at least one width")
        for bits in self.weight_bits:
            if bits not in (1, 2, 3, 4):
                raise ConfigError("weight_bits", f"widths must be 1..4, not {bits}")
        if len(set(self.weight_bits)) != len(self.weight_bits):
            raise ConfigError("weight_bits", f"lists a width twice: {list(self.weight_bits)}")
        if self.activation not in LUT_ACTIVATIONS:
            raise ConfigError(
                "activation",
                f"must be one of {', '.join(LUT_ACTIVATIONS)}, not {self.activation!r}",
            )
        _check_int("acc_bits", self.acc_bits, 16, 64)


@dataclass(frozen=True)
class MemoryConfig:
    """On-chip SRAMs: the input/weight scratchpad and the accumulator memory."""

    scratchpad_kib: int = 64
    scratchpad_banks: int = 4
    accumulator_kib: int = 16
    accumulator_banks: int = 2

    def __post_init__(self):
        _check_int("scratchpad_kib", self.scratchpad_kib, 1, 1 << 16)
        _check_int("accumulator_kib", self.accumulator_kib, 1, 1 << 16)
        for key in ("scratchpad_banks", "accumulator_banks"):
            _check_int(key, getattr(self, key), 1, 64)
            _check_power_of_two(key, getattr(self, key))


@dataclass(frozen=True)
class DramConfig:
    """The off-chip memory as the DMA sees it: sustained bytes per cycle, latency per burst,
    and how many read bursts the DMA keeps in flight to hide that latency."""

    bytes_per_cycle: int = 16
    latency_cycles: int = 100
    size_mib: int = 64  # the addressable DRAM a program may use
    read_bursts: int = 4  # enough to stream 4 KiB bursts past 100 cycles at 64 B per cycle

    def __post_init__(self):
        _check_int("size_mib", self.size_mib, 1, 4096)
        _check_int("read_bursts", self.read_bursts, 1, 64)
        _check_int("bytes_per_cycle", self.bytes_per_cycle, 1, 1024)
        _check_power_of_two("bytes_per_cycle", self.bytes_per_cycle)
        _check_int("latency_cycles", self.latency_cycles, 0, 100_000)


@dataclass(frozen=True)
class EnergyConfig:
    """Energy per operation in picojoules, for the simulator's energy report (``qaccel.energy``).

    ``mac``: pJ per multiply-accumulate of a (weight, activation) pair of the array, keyed like
    ``"int4*int8"``; ``lut_lookup``: pJ per LUT-core table lookup and accumulate (one cell, one
    weight bit plane). Pairs ``mac`` leaves out, and ``lut_lookup`` left unset, take the
    defaults ``qaccel.energy`` derives from operand and accumulator widths (M. Horowitz, ISSCC
    2014, 45 nm: 8-bit multiply 0.2 pJ, 32-bit add 0.1 pJ). ``sram_read_byte`` and
    ``sram_write_byte`` (scratchpad and accumulator memory) default to a 64-bit read of a 32 KB
    SRAM, 20 pJ / 8; ``dram_byte`` to a 64-bit DRAM access, 1.3 nJ / 8 (same source).
    """

    mac: Mapping[str, float] = field(default_factory=FrozenTable)
    lut_lookup: float | None = None
    sram_read_byte: float = SRAM_BYTE_PJ
    sram_write_byte: float = SRAM_BYTE_PJ
    dram_byte: float = DRAM_BYTE_PJ

    def __post_init__(self):
        # Keys as "weight*activation" strings, whether given as such or as FormatPairs.
        object.__setattr__(self, "mac", FrozenTable({str(k): v for k, v in self.mac.items()}))
        for pair, pj in self.mac.items():
            _check_pj(f'mac."{pair}"', pj)
        if self.lut_lookup is not None:
            _check_pj("lut_lookup", self.lut_lookup)
        for key in ("sram_read_byte", "sram_write_byte", "dram_byte"):
            _check_pj(key, getattr(self, key))


@dataclass(frozen=True)
class AcceleratorConfig:
    """The whole accelerator; at least one of ``array`` and ``lut`` is present."""

    name: str
    clock_mhz: float = 100.0
    array: ArrayConfig | None = None
    lut: LutCoreConfig | None = None
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    dram: DramConfig = field(default_factory=DramConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError("name", f"must be letters, digits, '-' or '_', not {self.name!r}")
        if not (math.isfinite(self.clock_mhz) and 0 < self.clock_mhz <= 2000):
            raise ConfigError("clock_mhz", f"must be in (0, 2000], not {self.clock_mhz}")
        if self.array is None and self.lut is None:
            raise ConfigError("", "a configuration needs an [array], a [lut] core, or both")
        # Each SRAM bank must hold at least one full row of what the compute units exchange.
        row_bytes, acc_row_bytes = 0, 0
        if self.array is not None:
            row_bytes = max(self.array.rows, self.array.cols) * 2  # widest operand: 16 bits
            acc_row_bytes = self.array.cols * self.array.acc_bits // 8
        if self.lut is not None:
            row_bytes = max(row_bytes, self.lut.tile_n)
            acc_row_bytes = max(acc_row_bytes, self.lut.tile_n * self.lut.acc_bits // 8)
        mem = self.memory
        for key, kib, banks, need in (
            ("scratchpad_kib", mem.scratchpad_kib, mem.scratchpad_banks, row_bytes),
            ("accumulator_kib", mem.accumulator_kib, mem.accumulator_banks, acc_row_bytes),
        ):
            if kib * 1024 // banks < need:
                raise ConfigError(
                    f"memory.{key}",
                    f"{kib} KiB in {banks} banks leaves "
                    f"{kib * 1024 // banks} bytes a bank, less than one "
                    f"{need}-byte row",
                )
        # Energy figures for hardware the configuration lacks would be silently unused.
        known = [str(m) for m in self.array.modes] if self.array is not None else []
        for pair in self.energy.mac:
            if pair not in known:
                raise ConfigError(
                    f'energy.mac."{pair}"',
                    f"{pair} is not a mode of this configuration "
                    f"(its modes: {', '.join(known) or 'none, it has no [array]'})",
                )
        if self.energy.lut_lookup is not None and self.lut is None:
            raise ConfigError(
                "energy.lut_lookup", "is set, but the configuration has no [lut] core"
            )


# --- TOML in --------------------------------------------------------------------------------


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, "a table"
    )


def _convert(tp, value, key: str):
    """``value`` from TOML as type ``tp``, or a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # X | None: None means absent
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner, value, key)
    if origin is Mapping:  # a TOML table of names to values
        inner = typing.get_args(tp)[1]
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {type(value).__name__} {value!r}")
        return {k: _convert(inner, v, f'{key}."{k}"') for k, v in value.items()}
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {type(value).__name__} {value!r}")
        return tuple(_convert(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {type(value).__name__} {value!r}")
        return _build(tp, value, key)
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]

    def path(key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    for k in data:
        if k not in names:
            raise ConfigError(path(k), f"unknown key (expected one of {', '.join(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], path(f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(path(f.name), "missing")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise (e.under(prefix) if prefix else e) from None


def config_from_dict(data: dict) -> AcceleratorConfig:
    """An ``AcceleratorConfig`` from the dictionary a TOML file parses to."""
    return _build(AcceleratorConfig, data)


def load_config(path: str | Path) -> AcceleratorConfig:
    """Read and validate a TOML configuration; errors name the file and the key."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("", f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{path}: not valid TOML: {e}") from None
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(e.key, f"{e.reason} (in {path})") from None


# --- TOML out -------------------------------------------------------------------------------


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if dataclasses.is_dataclass(value):
        items = ", ".join(
            f"{f.name} = {_toml_value(getattr(value, f.name))}" for f in dataclasses.fields(value)
        )
        return "{ " + items + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_field(value) -> str:
    """A field's value; a list of tables goes one table a line."""
    if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        return "[\n" + "".join(f"  {_toml_value(v)},\n" for v in value) + "]"
    return _toml_value(value)


def dump_toml(config: AcceleratorConfig) -> str:
    """The configuration as TOML text that ``load_config`` reads back to an equal object."""
    top, sections = [], []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue
        if dataclasses.is_dataclass(value):
            body = [
                f"{g.name} = {_toml_field(getattr(value, g.name))}"
                for g in dataclasses.fields(value)
                if getattr(value, g.name) is not None  # None: absent, the default applies
            ]
            sections.append(f"[{f.name}]\n" + "\n".join(body) + "\n")
        else:
            top.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(["\n".join(top) + "\n", *sections])

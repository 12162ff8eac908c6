"""qaccel.config: the presets, the TOML round trip, and one test per validation rule."""

import copy
import tomllib
from pathlib import Path

import pytest

from qaccel.config import (
    AcceleratorConfig,
    ConfigError,
    EnergyConfig,
    FormatPair,
    config_from_dict,
    dump_toml,
    load_config,
)

CONFIGS = Path(__file__).parent.parent / "configs"
PRESETS = sorted(p.stem for p in CONFIGS.glob("*.toml"))
REQUIRED_MODES = [
    ("int8", "int8"),
    ("int4", "int8"),
    ("int4", "int4"),
    ("int2", "int8"),
    ("ternary", "int8"),
    ("binary", "int8"),
    ("fp8_e4m3", "fp8_e4m3"),
    ("fp8_e5m2", "fp8_e5m2"),
    ("fp4_e2m1", "int8"),
    ("fp4_e2m1", "fp8_e4m3"),
    ("posit8_0", "posit8_0"),
]


def test_the_presets_exist():
    assert {"tiny", "edge", "lut"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_round_trip_through_toml(name):
    cfg = load_config(CONFIGS / f"{name}.toml")
    assert isinstance(cfg, AcceleratorConfig) and cfg.name == name
    assert config_from_dict(tomllib.loads(dump_toml(cfg))) == cfg


def test_preset_contents():
    tiny, edge, lut = (load_config(CONFIGS / f"{n}.toml") for n in ("tiny", "edge", "lut"))
    assert (tiny.array.rows, tiny.array.cols) == (4, 4)
    assert (edge.array.rows, edge.array.cols) == (16, 16)
    for cfg in (tiny, edge):
        assert [(m.weight, m.activation) for m in cfg.array.modes] == REQUIRED_MODES
    assert lut.lut.weight_bits == (1, 2, 3, 4) and lut.lut.ternary
    assert lut.lut.activation == "int8"


def base() -> dict:
    return tomllib.loads((CONFIGS / "lut.toml").read_text())


def with_change(path: str, value):
    data = base()
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()

BAD = [
    # (dotted key, new value, expected message)
    ("colour", "red", "colour: unknown key (expected one of name, clock_mhz, array"),
    ("array.rowz", 4, "array.rowz: unknown key (expected one of rows, cols"),
    (
        "array.modes",
        [{"weight": "int8", "activation": "int8", "scale": 1}],
        "array.modes[0].scale: unknown key",
    ),
    ("name", DELETE, "name: missing"),
    ("array.rows", DELETE, "array.rows: missing"),
    ("array.rows", "four", "array.rows: expected an integer, got str 'four'"),
    ("array.rows", True, "array.rows: expected an integer, got bool True"),
    ("array.rows", 4.0, "array.rows: expected an integer, got float 4.0"),
    ("array.modes", "int8", "array.modes: expected a list, got str 'int8'"),
    ("array.modes", ["int8"], "array.modes[0]: expected a table, got str 'int8'"),
    ("lut.ternary", "yes", "lut.ternary: expected true or false, got str 'yes'"),
    ("array.pipelined", 1, "array.pipelined: expected true or false, got int 1"),
    ("clock_mhz", "fast", "clock_mhz: expected a number, got str 'fast'"),
    ("memory", 3, "memory: expected a table, got int 3"),
    ("array.rows", 0, "array.rows: must be in 1..256, not 0"),
    ("array.cols", 1000, "array.cols: must be in 1..256, not 1000"),
    ("array.dataflow", "xs", "array.dataflow: must be one of ws, os, both, not 'xs'"),
    ("array.modes", [], "array.modes: must list at least one"),
    (
        "array.modes",
        [{"weight": "int8", "activation": "int8"}] * 2,
        "array.modes[1]: int8*int8 is listed twice",
    ),
    (
        "array.modes",
        [{"weight": "int9x", "activation": "int8"}],
        "array.modes[0].weight: unknown number format 'int9x'",
    ),
    (
        "array.modes",
        [{"weight": "int8", "activation": "e8m0"}],
        "array.modes[0].activation: 'e8m0' is a block scale",
    ),
    (
        "array.modes",
        [{"weight": "mxfp4", "activation": "int8"}],
        "array.modes[0]: mxfp4*int8: MX formats pair only with MX formats",
    ),
    (
        "array.mx_scale_range",
        [3, -3],
        "array.mx_scale_range: must be [lo, hi] with -254 <= lo <= hi <= 254, not [3, -3]",
    ),
    ("array.mx_scale_range", [0], "array.mx_scale_range: must be [lo, hi]"),
    ("array.mx_scale_range", [0, "7"], "array.mx_scale_range[1]: expected an integer"),
    ("array.acc_bits", 12, "array.acc_bits: 12 bits cannot hold one int8*int8 product"),
    ("array.acc_bits", 128, "array.acc_bits: must be in 8..64, not 128"),
    ("lut.group", 1, "lut.group: must be in 2..8, not 1"),
    ("lut.weight_bits", [1, 5], "lut.weight_bits: widths must be 1..4, not 5"),
    ("lut.weight_bits", [2, 2], "lut.weight_bits: lists a width twice"),
    ("lut.weight_bits", [], "lut.weight_bits: must list at least one width"),
    ("lut.activation", "fp8_e4m3", "lut.activation: must be one of int8, uint8"),
    ("memory.scratchpad_banks", 3, "memory.scratchpad_banks: must be a power of two, not 3"),
    ("memory.accumulator_banks", 0, "memory.accumulator_banks: must be in 1..64, not 0"),
    ("memory.scratchpad_kib", 0, "memory.scratchpad_kib: must be in 1..65536, not 0"),
    ("dram.bytes_per_cycle", 12, "dram.bytes_per_cycle: must be a power of two, not 12"),
    ("dram.latency_cycles", -1, "dram.latency_cycles: must be in 0..100000, not -1"),
    ("dram.read_bursts", 0, "dram.read_bursts: must be in 1..64, not 0"),
    ("clock_mhz", 0, "clock_mhz: must be in (0, 2000], not 0.0"),
    ("name", "my accel", "name: must be letters, digits"),
]


@pytest.mark.parametrize("key, value, message", BAD, ids=[b[0] + ":" + b[2][:30] for b in BAD])
def test_bad_configs_name_the_key(key, value, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(with_change(key, value if value is DELETE else copy.deepcopy(value)))
    assert str(info.value).startswith(message)


def test_a_config_needs_some_compute():
    data = base()
    del data["array"], data["lut"]
    with pytest.raises(ConfigError, match="needs an \\[array\\], a \\[lut\\] core, or both"):
        config_from_dict(data)


def test_banks_must_hold_a_row():
    data = base()
    data["memory"].update(accumulator_kib=1, accumulator_banks=8)
    with pytest.raises(
        ConfigError,
        match=r"memory\.accumulator_kib: 1 KiB in 8 banks leaves 128 "
        r"bytes a bank, less than one 256-byte row",
    ):
        config_from_dict(data)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)
    bad.write_text('name = "x"\n[array]\nrows = 0\ncols = 4\nmodes = []\n')
    expected = r"array\.rows: must be in 1\.\.256, not 0 \(in .*bad\.toml"
    with pytest.raises(ConfigError, match=expected):
        load_config(bad)


def test_config_objects_are_frozen():
    pair = FormatPair("int8", "int8")
    with pytest.raises(AttributeError):
        pair.weight = "int4"


def test_mx_modes_in_a_config():
    data = with_change("array.modes", [{"weight": "mxfp8_e4m3", "activation": "mxfp4"}])
    data["array"]["mx_scale_range"] = [-20, 4]
    data["array"]["dataflow"] = "os"
    cfg = config_from_dict(data)
    assert cfg.array.modes[0].is_mx and not cfg.array.modes[0].is_integer
    assert cfg.array.mx_scale_range == (-20, 4)
    assert config_from_dict(tomllib.loads(dump_toml(cfg))) == cfg
    data["array"]["dataflow"] = "ws"
    with pytest.raises(ConfigError, match=r"array\.modes\[0\]: .*need the output-stationary"):
        config_from_dict(data)


ENERGY_BAD = [
    # (key in [energy], value, expected message)
    (
        "static_mw",
        3.0,
        "energy.static_mw: unknown key (expected one of mac, lut_lookup, sram_read_byte, "
        "sram_write_byte, dram_byte)",
    ),
    ("dram_byte", -1, "energy.dram_byte: must be a finite number of picojoules >= 0, not -1.0"),
    ("sram_read_byte", float("inf"), "energy.sram_read_byte: must be a finite number"),
    ("sram_write_byte", "cheap", "energy.sram_write_byte: expected a number, got str 'cheap'"),
    ("lut_lookup", -0.5, "energy.lut_lookup: must be a finite number of picojoules >= 0"),
    ("mac", 0.3, "energy.mac: expected a table, got float 0.3"),
    ("mac", {"int8*int8": "x"}, 'energy.mac."int8*int8": expected a number, got str'),
    (
        "mac",
        {"int8*int8": -0.1},
        'energy.mac."int8*int8": must be a finite number of picojoules >= 0, not -0.1',
    ),
    (
        "mac",
        {"int4*int8": 0.2},
        'energy.mac."int4*int8": int4*int8 is not a mode of this configuration '
        "(its modes: int8*int8)",
    ),
    ("mac", {"int8": 0.2}, 'energy.mac."int8": int8 is not a mode of this configuration'),
]


@pytest.mark.parametrize("key, value, message", ENERGY_BAD, ids=[b[2][:40] for b in ENERGY_BAD])
def test_bad_energy_tables_name_the_key(key, value, message):
    data = base()
    data["energy"] = {key: value}
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert str(info.value).startswith(message)


def test_energy_figures_need_their_hardware():
    data = base()
    del data["array"]
    data["energy"] = {"mac": {"int8*int8": 0.3}}
    with pytest.raises(ConfigError, match=r"its modes: none, it has no \[array\]"):
        config_from_dict(data)
    data = base()
    del data["lut"]
    data["energy"] = {"lut_lookup": 0.1}
    with pytest.raises(
        ConfigError, match=r"energy\.lut_lookup: is set, but the configuration has no \[lut\] core"
    ):
        config_from_dict(data)


def test_the_energy_table_is_optional_frozen_and_round_trips():
    cfg = config_from_dict(base())
    assert cfg.energy == EnergyConfig() and not cfg.energy.mac and cfg.energy.lut_lookup is None
    data = base()
    data["energy"] = {"mac": {"int8*int8": 0.25}, "lut_lookup": 0.125, "dram_byte": 100}
    cfg = config_from_dict(data)
    assert cfg.energy.mac == {"int8*int8": 0.25} and cfg.energy.dram_byte == 100.0
    with pytest.raises(TypeError):
        cfg.energy.mac["int8*int8"] = 1.0
    assert config_from_dict(tomllib.loads(dump_toml(cfg))) == cfg
    assert copy.deepcopy(cfg) == cfg and hash(copy.deepcopy(cfg)) == hash(cfg)

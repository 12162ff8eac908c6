"""qaccel.energy: the default figures and their rules, overrides, and the energy report."""

import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from qaccel import energy
from qaccel.config import FormatPair, config_from_dict, dump_toml, load_config
from qaccel.energy import energy_report, energy_table, mac_pj
from qaccel.modes import mode_spec

CONFIGS = Path(__file__).parent.parent / "configs"
PRESETS = sorted(p.stem for p in CONFIGS.glob("*.toml"))


def preset(name: str):
    return load_config(CONFIGS / f"{name}.toml")


def small(**energy_table_) -> dict:
    """A 4x4 array with three integer modes beside a LUT core, and the given [energy] table."""
    data = {
        "name": "small",
        "array": {
            "rows": 4,
            "cols": 4,
            "modes": [{"weight": w, "activation": "int8"} for w in ("int8", "int4", "int2")],
        },
        "lut": {},
    }
    if energy_table_:
        data["energy"] = energy_table_
    return data


@pytest.mark.parametrize("name", PRESETS)
def test_defaults_are_positive_for_every_preset_pair(name):
    cfg = preset(name)
    for pair in cfg.array.modes:
        pj = mac_pj(cfg, pair.weight, pair.activation)
        assert math.isfinite(pj) and pj > 0, pair
    if cfg.lut is not None:
        assert energy.lut_lookup_pj(cfg) > 0


@pytest.mark.parametrize("name", ["tiny", "edge"])
def test_defaults_grow_with_operand_width(name):
    cfg = preset(name)
    assert mac_pj(cfg, "int2", "int8") < mac_pj(cfg, "int4", "int8") < mac_pj(cfg, "int8", "int8")
    assert mac_pj(cfg, "int4", "int4") < mac_pj(cfg, "int4", "int8")
    # binary and ternary weights ride the PE's 2-bit lanes: they cost what int2 does
    assert mac_pj(cfg, "binary", "int8") == mac_pj(cfg, "ternary", "int8")
    assert mac_pj(cfg, "binary", "int8") == mac_pj(cfg, "int2", "int8")


def test_the_documented_rules():
    assert energy.mult_pj(8, 8) == 0.2 and energy.add_pj(32) == 0.1  # Horowitz, 45 nm
    assert energy.mult_pj(32, 32) == pytest.approx(3.2)  # published: 3.1 pJ
    edge = preset("edge")
    assert mac_pj(edge, "int8", "int8") == pytest.approx(0.2 + 0.1)
    assert mac_pj(edge, "int4", "int8") == pytest.approx(0.1 + 0.1)
    # fp8_e4m3: 5-bit significands, 4-bit shifts (a 5-bit exponent add), a 41-bit accumulator
    # for 16 rows
    e4m3 = 0.2 * 25 / 64 + 0.1 * 5 / 32 + 0.1 * 41 / 32
    assert mac_pj(edge, "fp8_e4m3", "fp8_e4m3") == pytest.approx(e4m3)
    # fp4 x int8: the integer has no exponent, so no exponent add; a 16-bit accumulator
    assert mac_pj(edge, "fp4_e2m1", "int8") == pytest.approx(0.2 * 3 * 8 / 64 + 0.1 * 16 / 32)
    # group 4: an 11-bit negate and a 35-bit plane accumulate
    assert energy.lut_lookup_pj(preset("lut")) == pytest.approx(0.1 * (11 + 35) / 32)
    assert edge.energy.sram_read_byte == edge.energy.sram_write_byte == 2.5
    assert edge.energy.dram_byte == 162.5


def test_float_accumulators_follow_max_k():
    data = small()
    data["array"]["modes"] = [{"weight": "fp8_e4m3", "activation": "fp8_e4m3"}]
    short = config_from_dict(data)
    data["array"]["max_k"] = 1024
    long = config_from_dict(data)
    assert mac_pj(short, "fp8_e4m3", "fp8_e4m3") < mac_pj(long, "fp8_e4m3", "fp8_e4m3")


def test_mx_modes_cost_their_elements_plus_the_block_share():
    data = small()
    data["array"]["modes"] = [
        {"weight": "mxfp8_e4m3", "activation": "mxfp8_e4m3"},
        {"weight": "fp8_e4m3", "activation": "fp8_e4m3"},
    ]
    cfg = config_from_dict(data)
    spec = mode_spec("mxfp8_e4m3", "mxfp8_e4m3", rows=4, acc_bits=32)
    product = 0.2 * 25 / 64 + 0.1 * 5 / 32
    block_share = (0.1 * 9 / 32 + 0.1 * spec.acc_width / 32) / 32
    expected = product + 0.1 * spec.block_width / 32 + block_share
    assert mac_pj(cfg, "mxfp8_e4m3", "mxfp8_e4m3") == pytest.approx(expected)


def test_a_configured_figure_is_used():
    cfg = config_from_dict(small(mac={"int4*int8": 0.5}, lut_lookup=0.25, dram_byte=100))
    assert mac_pj(cfg, "int4", "int8") == 0.5
    assert mac_pj(cfg, "int8", "int8") == energy.default_mac_pj(cfg, "int8", "int8")
    assert energy.lut_lookup_pj(cfg) == 0.25
    table = energy_table(cfg)
    assert list(table["mac"]) == ["int8*int8", "int4*int8", "int2*int8"]  # the array's order
    assert table["mac"]["int4*int8"] == 0.5 and table["lut_lookup"] == 0.25
    assert table["dram_byte"] == 100.0 and table["sram_read_byte"] == 2.5
    assert energy_table(preset("tiny"))["lut_lookup"] is None


def test_an_unknown_pair_is_named_with_the_known_ones():
    cfg = preset("lut")
    with pytest.raises(
        ValueError,
        match=r"int4\*int8 is not a mode of configuration 'lut' \(its modes: int8\*int8\)",
    ):
        mac_pj(cfg, "int4", "int8")
    with pytest.raises(ValueError, match=r"configuration 'tiny' has no \[lut\] core"):
        energy.lut_lookup_pj(preset("tiny"))


# Powers of two, so every product and sum below is exact in binary floating point.
EXACT = {"mac": {"int8*int8": 0.5, "int4*int8": 0.25}, "lut_lookup": 0.125}
EXACT |= {"sram_read_byte": 2.0, "sram_write_byte": 4.0, "dram_byte": 128.0}


def test_the_report_sums_exactly():
    cfg = config_from_dict(small(**EXACT))
    counts = {
        "macs": {"int8*int8": 1000, FormatPair("int4", "int8"): np.int64(64)},
        "lut_lookups": 8,
        "sram_read_bytes": 10,
        "sram_write_bytes": 3,
        "dram_bytes": 2,
    }
    report = energy_report(cfg, counts)
    assert report["items"] == {
        "macs": {"int8*int8": 500.0, "int4*int8": 16.0},
        "lut_lookups": 1.0,
        "sram_read_bytes": 20.0,
        "sram_write_bytes": 12.0,
        "dram_bytes": 256.0,
    }
    assert (report["compute"], report["sram"], report["dram"]) == (517.0, 32.0, 256.0)
    assert report["total"] == 805.0
    assert report["total"] == report["compute"] + report["sram"] + report["dram"]
    # with default figures too: total is the sum of the three parts, bit for bit
    report = energy_report(preset("edge"), {"macs": {"fp8_e5m2*fp8_e5m2": 7}, "dram_bytes": 3})
    assert report["total"] == report["compute"] + report["sram"] + report["dram"]
    assert report["compute"] == 7 * mac_pj(preset("edge"), "fp8_e5m2", "fp8_e5m2")
    assert energy_report(cfg, {})["total"] == 0.0


def test_the_report_attributes_counts_to_units():
    cfg = config_from_dict(small(**EXACT))
    counts = {
        "sram_read_bytes": 1,  # not attributed to any unit
        "units": {
            "array": {"macs": {"int8*int8": 4}, "sram_read_bytes": 8},
            "lut": {"lut_lookups": 16, "sram_read_bytes": 8},
            "load": {"dram_bytes": 4, "sram_write_bytes": 4},
        },
    }
    report = energy_report(cfg, counts)
    units = report["units"]
    assert units["array"]["total"] == 2.0 + 16.0
    assert units["lut"]["compute"] == 2.0 and units["lut"]["sram"] == 16.0
    assert units["load"]["dram"] == 512.0 and units["load"]["sram"] == 16.0
    assert report["sram"] == 2.0 + 16.0 + 16.0 + 16.0
    assert report["total"] == sum(u["total"] for u in units.values()) + 2.0


BAD_COUNTS = [
    ({"flops": 3}, "counts: unknown count 'flops' (expected one of macs, lut_lookups"),
    ({"dram_bytes": -1}, "counts: dram_bytes must be a non-negative integer, not -1"),
    ({"dram_bytes": 1.5}, "counts: dram_bytes must be a non-negative integer, not 1.5"),
    ({"macs": {"int8*int8": True}}, "counts: macs['int8*int8'] must be a non-negative integer"),
    ({"macs": 5}, "counts: macs must be a table of pair -> count, not 5"),
    ({"macs": {"fp8_e4m3*int8": 1}}, "fp8_e4m3*int8 is not a mode of configuration 'small'"),
    ({"units": 3}, "counts: units must be a table of unit name -> counts, not 3"),
    ({"units": {"dma": 3}}, "counts: units['dma'] must be a table of counts"),
    (
        {"units": {"dma": {"units": {}}}},
        "counts: units['dma']: unknown count 'units' (expected one of macs,",
    ),
    (
        {"units": {"dma": {"dram_bytes": -2}}},
        "counts: units['dma']: dram_bytes must be a non-negative integer, not -2",
    ),
]


@pytest.mark.parametrize("counts, message", BAD_COUNTS, ids=[b[1][:40] for b in BAD_COUNTS])
def test_bad_counts(counts, message):
    with pytest.raises(ValueError) as info:
        energy_report(config_from_dict(small()), counts)
    assert str(info.value).startswith(message)


def test_lut_lookups_need_a_lut_core():
    with pytest.raises(ValueError, match=r"configuration 'tiny' has no \[lut\] core"):
        energy_report(preset("tiny"), {"lut_lookups": 1})
    assert energy_report(preset("tiny"), {"lut_lookups": 0})["compute"] == 0.0


def test_the_energy_table_round_trips_through_toml():
    cfg = config_from_dict(small(**EXACT))
    text = dump_toml(cfg)
    assert '[energy]\nmac = { "int4*int8" = 0.25, "int8*int8" = 0.5 }\nlut_lookup = 0.125' in text
    again = config_from_dict(tomllib.loads(text))
    assert again == cfg and hash(again) == hash(cfg)
    assert energy_table(again) == energy_table(cfg)

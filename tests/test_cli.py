"""The qaccel command: help, version, the formats table, config checking, one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from qaccel import __version__, formats
from qaccel.cli import main

CONFIGS = Path(__file__).parent.parent / "configs"


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("formats", "config", "doctor"):
        assert command in out


def test_version_from_the_installed_script():
    exe = Path(sys.executable).parent / "qaccel"
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"qaccel {__version__}"


def test_formats_table_lists_every_format_with_its_range(capsys):
    assert main(["formats"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for name, fmt in formats.FORMATS.items():
        assert rows[name][1] == str(fmt.bits)
    for name in formats.MX_FORMATS:
        assert name in rows
    assert rows["fp8_e4m3"][3:6] == ["-448", "448", "0.00195312"]
    assert rows["posit8_0"][3:6] == ["-64", "64", "0.015625"]
    assert "NaN 0x7f/0xff" in out and "NaR 0x8000" in out


def test_config_prints_the_normal_form(capsys):
    assert main(["config", str(CONFIGS / "edge.toml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith('name = "edge"') and "[array]" in out and "rows = 16" in out


def test_bad_config_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[array]\nrows = "four"\ncols = 4\nmodes = []\n')
    assert main(["config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("qaccel: error: array.rows: expected an integer, got str 'four'")
    assert err.count("\n") == 1

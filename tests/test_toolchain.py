"""The environment the project's tools run in."""

from qaccel.toolchain import tool_env, verilator_bin_dir


def test_tool_env_puts_verilator_on_path_and_sets_its_make_flags(monkeypatch):
    monkeypatch.delenv("MAKEFLAGS", raising=False)
    env = tool_env()
    assert env["PATH"].split(":")[0] == str(verilator_bin_dir())
    assert env["MAKEFLAGS"] == "CFG_CXXFLAGS_PCH_I=-include"


def test_tool_env_keeps_an_outer_makes_flags(monkeypatch):
    """Under `make test` MAKEFLAGS is already set; Verilator's build still needs its flag."""
    monkeypatch.setenv("MAKEFLAGS", "w -j2")
    assert tool_env()["MAKEFLAGS"] == "w -j2 CFG_CXXFLAGS_PCH_I=-include"
    monkeypatch.setenv("MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include")
    assert tool_env()["MAKEFLAGS"] == "CFG_CXXFLAGS_PCH_I=-include"

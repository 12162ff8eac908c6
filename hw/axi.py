"""AXI4 (full) interfaces as ``amaranth.lib.wiring`` signatures, seen from the master.

The members are the flat AXI4 signals with their standard names (``awaddr``, ``rdata``, ...), so a
component with a member ``m_axi`` of one of these signatures has Verilog ports ``m_axi__awaddr``,
``m_axi__rdata``, ... and cocotbext-axi finds them with ``AxiBus.from_prefix(dut, "m_axi_")``
(cocotb-bus joins prefix and name with one more ``_``). Channels: write address (``aw*``),
write data (``w*``), write response (``b*``), read address (``ar*``), read data (``r*``); each has
``*valid`` (from the sender) and ``*ready`` (from the receiver). ``awregion``/``arregion`` and
the user signals are left out (optional in AXI4 and in cocotbext-axi).
"""

from __future__ import annotations

from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "Burst",
    "Resp",
    "axi4_read_signature",
    "axi4_signature",
    "axi4_write_signature",
    "check_data_bytes",
]


class Burst(enum.Enum, shape=2):
    """``AxBURST``: how the address advances from beat to beat."""

    FIXED = 0
    INCR = 1
    WRAP = 2


class Resp(enum.Enum, shape=2):
    """``RRESP`` / ``BRESP``."""

    OKAY = 0
    EXOKAY = 1  # only ever an answer to an exclusive access
    SLVERR = 2
    DECERR = 3


def check_data_bytes(data_bytes: int) -> None:
    """Raise ValueError unless ``data_bytes`` (bytes per beat) is a power of two in 1..128."""
    if (
        not isinstance(data_bytes, int)
        or not 1 <= data_bytes <= 128
        or data_bytes & (data_bytes - 1)
    ):
        raise ValueError(f"data_bytes must be a power of two in 1..128, not {data_bytes!r}")


def _check(addr_width, data_bytes, id_width):
    if not isinstance(addr_width, int) or not 1 <= addr_width <= 64:
        raise ValueError(f"addr_width must be an integer in 1..64, not {addr_width!r}")
    check_data_bytes(data_bytes)
    if not isinstance(id_width, int) or not 1 <= id_width <= 32:
        raise ValueError(f"id_width must be an integer in 1..32, not {id_width!r}")


def _address_channel(prefix: str, addr_width: int, id_width: int) -> dict:
    return {
        f"{prefix}id": Out(id_width),
        f"{prefix}addr": Out(addr_width),
        f"{prefix}len": Out(8),  # beats - 1
        f"{prefix}size": Out(3),  # log2(bytes per beat)
        f"{prefix}burst": Out(Burst),
        f"{prefix}lock": Out(1),
        f"{prefix}cache": Out(4),
        f"{prefix}prot": Out(3),
        f"{prefix}qos": Out(4),
        f"{prefix}valid": Out(1),
        f"{prefix}ready": In(1),
    }


def axi4_read_signature(addr_width: int, data_bytes: int, id_width: int = 1) -> wiring.Signature:
    """The read half of an AXI4 master port: channels AR and R."""
    _check(addr_width, data_bytes, id_width)
    return wiring.Signature(
        {
            **_address_channel("ar", addr_width, id_width),
            "rid": In(id_width),
            "rdata": In(8 * data_bytes),
            "rresp": In(Resp),
            "rlast": In(1),
            "rvalid": In(1),
            "rready": Out(1),
        }
    )


def axi4_write_signature(addr_width: int, data_bytes: int, id_width: int = 1) -> wiring.Signature:
    """The write half of an AXI4 master port: channels AW, W and B."""
    _check(addr_width, data_bytes, id_width)
    return wiring.Signature(
        {
            **_address_channel("aw", addr_width, id_width),
            "wdata": Out(8 * data_bytes),
            "wstrb": Out(data_bytes),
            "wlast": Out(1),
            "wvalid": Out(1),
            "wready": In(1),
            "bid": In(id_width),
            "bresp": In(Resp),
            "bvalid": In(1),
            "bready": Out(1),
        }
    )


def axi4_signature(addr_width: int, data_bytes: int, id_width: int = 1) -> wiring.Signature:
    """A full AXI4 master port (both halves); ``wiring.flipped`` it for a slave."""
    return wiring.Signature(
        {
            **axi4_write_signature(addr_width, data_bytes, id_width).members,
            **axi4_read_signature(addr_width, data_bytes, id_width).members,
        }
    )

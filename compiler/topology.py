"""Read SCALE-Sim 3.0.0 topology files, so its users can bring their workloads unchanged.

Both of SCALE-Sim's formats are comma-separated, with one header row, then one layer a row:

- **conv** (``-i conv``): ``Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width,
  Channels, Num Filter, Strides,`` and an optional ``N:M`` sparsity ratio (default ``1:1``).
  One stride serves both directions. There is no padding. As in SCALE-Sim, a layer whose name
  contains ``DP`` is depthwise: it becomes one layer per channel, ``<name>Channel_<i>``, each with
  one channel and all the filters.
- **GEMM** (``-i gemm``): ``Layer, M, N, K,`` and an optional sparsity ratio. SCALE-Sim turns
  each row into a conv layer (``topology_utils.load_arrays_gemm``)::

      entries = [layer_name, m, k, 1, k, 1, n, 1, 1, ...]

  an M x K input map, a 1 x K filter, one channel, N filters, stride 1: M output pixels, each a
  K-long dot product, for N filters. So **M is the output-row count, K the reduction and N the
  output-column count**, ``Y[M x N] = A[M x K] @ W[K x N]``, whatever order the columns come in.

Every layer is then the GEMM SCALE-Sim runs (its ``calc_spatio_temporal_params``): ``m`` output
pixels (rows), ``k = Fh * Fw * C`` (reduction), ``n`` filters (columns), ``macs = m * k * n``.
The output size is SCALE-Sim's ``ceil((H - Fh + S) / S)``: a last window that runs past the
input still makes an output pixel (SCALE-Sim reads nothing for the missing inputs, i.e. zeros),
so a 7x7 stride-2 filter on 224 gives 110, not PyTorch's 109. The sparsity ratio is kept, not
applied: ``macs`` is the dense count, as SCALE-Sim's own ``get_layer_mac_ops``.

Where SCALE-Sim reads a file, this reader gives the same layers; as there, the text after a
row's last comma is not read (SCALE-Sim's rows end with a comma). It also reads, where SCALE-Sim
fails, what files in SCALE-Sim's own topology folder contain: a row lacking only its trailing comma,
a UTF-8 byte order mark, leading blank lines, rows of empty fields, and columns past the sparsity
ratio that the header names (ignored; an empty sparsity field then means 1:1). Anything else it
cannot read raises :class:`TopologyError`, naming the file, line and column.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CONV_COLUMNS",
    "GEMM_COLUMNS",
    "Layer",
    "TopologyError",
    "parse_topology",
    "read_topology",
]

Kind = Literal["conv", "gemm"]

CONV_COLUMNS = (
    "Layer name",
    "IFMAP Height",
    "IFMAP Width",
    "Filter Height",
    "Filter Width",
    "Channels",
    "Num Filter",
    "Strides",
    "Sparsity",
)
GEMM_COLUMNS = ("Layer", "M", "N", "K", "Sparsity")


class TopologyError(ValueError):
    """A topology file that cannot be read; the message names the file, line and column."""


@dataclass(frozen=True)
class Layer:
    """One layer as SCALE-Sim sees it: a conv layer (a GEMM layer is stored as the conv layer
    SCALE-Sim makes of it, see :meth:`from_gemm`) and the GEMM it is."""

    name: str
    kind: Kind
    ifmap_h: int
    ifmap_w: int
    filter_h: int
    filter_w: int
    channels: int
    num_filters: int
    stride: int = 1
    sparsity: tuple[int, int] = (1, 1)

    def __post_init__(self):
        if self.kind not in ("conv", "gemm"):
            raise ValueError(f"kind must be 'conv' or 'gemm', not {self.kind!r}")
        for field in ("ifmap_h", "ifmap_w", "filter_h", "filter_w", "channels", "num_filters"):
            _check_positive(field, getattr(self, field))
        _check_positive("stride", self.stride)
        if self.filter_h > self.ifmap_h or self.filter_w > self.ifmap_w:
            raise ValueError(
                f"filter {self.filter_h}x{self.filter_w} is larger than "
                f"the input {self.ifmap_h}x{self.ifmap_w}"
            )
        nz, group = self.sparsity
        if not (isinstance(nz, int) and isinstance(group, int) and 0 < nz <= group):
            raise ValueError(f"sparsity must be N:M with 0 < N <= M, not {nz}:{group}")

    @classmethod
    def from_gemm(cls, name: str, m: int, n: int, k: int, sparsity=(1, 1)) -> Layer:
        """The layer for a GEMM row ``name, M, N, K``, mapped as SCALE-Sim maps it."""
        return cls(name, "gemm", m, k, 1, k, 1, n, 1, sparsity)

    @property
    def ofmap_h(self) -> int:
        return _ceil_div(self.ifmap_h - self.filter_h, self.stride) + 1

    @property
    def ofmap_w(self) -> int:
        return _ceil_div(self.ifmap_w - self.filter_w, self.stride) + 1

    @property
    def m(self) -> int:
        """Output rows: output pixels per filter (a GEMM's M)."""
        return self.ofmap_h * self.ofmap_w

    @property
    def k(self) -> int:
        """Reduction length: one filter window (a GEMM's K)."""
        return self.filter_h * self.filter_w * self.channels

    @property
    def n(self) -> int:
        """Output columns: filters (a GEMM's N)."""
        return self.num_filters

    @property
    def macs(self) -> int:
        """Dense multiply-accumulates, SCALE-Sim's ``get_layer_mac_ops``."""
        return self.m * self.k * self.n


def read_topology(path: str | os.PathLike, kind: Kind | Literal["auto"] = "auto") -> list[Layer]:
    """The layers of the SCALE-Sim topology file at ``path``; ``kind="auto"`` tells the format
    from the header, ``"conv"`` or ``"gemm"`` forces it (as SCALE-Sim's ``-i``)."""
    source = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise TopologyError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    return parse_topology(text, kind, source=source)


def parse_topology(
    text: str, kind: Kind | Literal["auto"] = "auto", *, source: str = "<topology>"
) -> list[Layer]:
    """The layers of a topology file's ``text``, as :func:`read_topology` reads them;
    ``source`` is the file name the error messages give."""
    if kind not in ("auto", "conv", "gemm"):
        raise ValueError(f"kind must be 'auto', 'conv' or 'gemm', not {kind!r}")
    lines = re.split(r"\r\n|\r|\n", text.removeprefix("\ufeff"))
    rows = [(number, _fields(line)) for number, line in enumerate(lines, 1)]
    rows = [(number, fields) for number, fields in rows if fields]
    if not rows:
        raise TopologyError(f"{source}: empty file; expected a header row, then layers")
    (header_line, header), rows = rows[0], rows[1:]
    if header[-1] == "":
        header.pop()
    kind = _header_kind(header, kind, f"{source}:{header_line}")
    columns = CONV_COLUMNS if kind == "conv" else GEMM_COLUMNS
    # Extra columns are allowed where the header names them (Resnet50.csv's Eh, Ew, e2).
    width = max(len(columns), len(header))
    layers = []
    for number, fields in rows:
        layers += _parse_row(fields, kind, columns, width, f"{source}:{number}")
    if not layers:
        raise TopologyError(f"{source}: no layers after the header on line {header_line}")
    return layers


def _fields(line: str) -> list[str]:
    """A row's stripped fields; [] for a blank row, or one of empty fields (",,,,", as
    spreadsheets save them)."""
    fields = [field.strip() for field in line.split(",")]
    return fields if any(fields) else []


def _header_kind(header: list[str], kind: str, where: str) -> Kind:
    names = [name.lower() for name in header]
    if names[1:4] == ["m", "n", "k"]:
        found = "gemm"
    elif len(names) >= 8 and names[1].startswith("ifmap") and names[7].startswith("stride"):
        found = "conv"
    else:
        found = None
    if kind == "auto":
        if found is None:
            raise TopologyError(
                f"{where}: unknown header {', '.join(header)!r}; expected SCALE-Sim's conv "
                f"header ({', '.join(CONV_COLUMNS[:8])}) or GEMM header "
                f"({', '.join(GEMM_COLUMNS[:4])}), or pass kind='conv' or kind='gemm'"
            )
        return found
    if found is not None and found != kind:
        raise TopologyError(f"{where}: the header is a {found} header, but kind={kind!r}")
    # SCALE-Sim skips its first row unread: a layer there would be lost without a word.
    if found is None and len(names) > 3 and all(re.fullmatch(r"\d+", n) for n in names[1:4]):
        raise TopologyError(f"{where}: expected a header row, found a layer")
    return kind


def _parse_row(
    fields: list[str], kind: Kind, columns: tuple[str, ...], width: int, where: str
) -> list[Layer]:
    required = len(columns) - 1
    # SCALE-Sim never reads the text after a row's last comma (``row.split(',')[:-1]``): its
    # rows end with a comma, and a note there ("#dw" in mobilnet_paper.csv) is ignored. A row
    # that lacks only that trailing comma is read whole, where SCALE-Sim fails.
    if fields[-1] == "" or len(fields) > required:
        fields = fields[:-1]
    if not required <= len(fields) <= width:
        raise TopologyError(
            f"{where}: expected {required} fields ({', '.join(columns[:required])}) and an "
            f"optional sparsity ratio, found {len(fields)}"
        )
    name = fields[0]
    sizes = [_positive(fields[i], i, columns, where) for i in range(1, required)]
    sparsity = (1, 1)
    if len(fields) > required and fields[required]:
        sparsity = _ratio(fields[required], required, columns, where)
    if kind == "gemm":
        m, n, k = sizes
        return [Layer.from_gemm(name, m, n, k, sparsity)]
    for filt, size in ((3, 1), (4, 2)):
        if sizes[filt - 1] > sizes[size - 1]:
            raise TopologyError(
                f"{where}: column {filt + 1} ({columns[filt]}): {sizes[filt - 1]} is larger "
                f"than the {columns[size]} {sizes[size - 1]}"
            )
    h, w, fh, fw, c, f, s = sizes
    if "DP" in name:  # SCALE-Sim's depthwise marker, case-sensitive as there
        return [
            Layer(f"{name}Channel_{i}", "conv", h, w, fh, fw, 1, f, s, sparsity) for i in range(c)
        ]
    return [Layer(name, "conv", h, w, fh, fw, c, f, s, sparsity)]


def _positive(text: str, index: int, columns: tuple[str, ...], where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise TopologyError(
            f"{where}: column {index + 1} ({columns[index]}): {text!r} is not a positive integer"
        )
    return value


def _ratio(text: str, index: int, columns: tuple[str, ...], where: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)\s*:\s*(\d+)", text)
    if match is None or not 0 < int(match[1]) <= int(match[2]):
        raise TopologyError(
            f"{where}: column {index + 1} ({columns[index]}): {text!r} is not a sparsity ratio "
            "N:M with 0 < N <= M"
        )
    return int(match[1]), int(match[2])


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)

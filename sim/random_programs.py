"""Random valid programs, to compare the timing engines with each other and with the RTL.

``random_program(cfg, seed)`` draws a Program and its inputs; ``programs(cfg)`` is the same as
a hypothesis strategy. A program mixes, at random: LOAD and STORE of scratchpad and accumulator
rows (NATIVE and INT32 elements; 2-D, with gaps between DRAM rows; across a 4 KiB boundary;
one DRAM row longer than a 256-beat burst), GEMM in every array mode and dataflow (MX modes
with their scale rows) of one tile or of several back to back (output-stationary m up to
three times the array's rows; weight-stationary k of two or three times rows, m = 1 among
them), LUT_GEMM in every LUT mode, POST with and without a residual, signed and unsigned,
and the tokens between them: the chains the data needs (load -> compute ->
store, and back when rows or DRAM bytes are reused), extra ones, none at all between
instructions of different units on different rows (often of the same bank), bursts of one
unit that fill its queue, and compute instructions with each of the 16 flag combinations.
Every LOAD reads its own input tensor (``in0``, ``in1``, ...: uint8, one row per DRAM row,
filled with operand bytes, E8M0 scales or accumulator values as the rows are used); every
STORE writes its own output tensor (``out0``, ...).

**Valid by construction.** The generator keeps the happens-before relation of what it has
emitted as ``qaccel.program.check_program`` computes it (vector clocks over the four token
channels). Before emitting an instruction it finds the earlier ones of other units that touch
the same rows or DRAM bytes, one of them writing, and orders them before it: it pops a channel
and sets the matching push on an instruction of the neighbour unit that comes after them (and
after that channel's last push); a load and a store are ordered through a compute instruction.
Every pop is thus matched by an earlier push in program order, so the queues drain in program
order and cannot deadlock, and every push has its pop, so no token is left at HALT. Reads take
rows already written. An instruction that cannot be ordered is tried on other rows a few times
and then dropped, so generation always ends.

``program_features`` names what a program exercises, from its instructions alone;
``coverage_goals`` lists the features the generator aims at on a configuration.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from qaccel import config as qconfig
from qaccel.isa import QUEUE_DEPTH, TOKEN_FLAGS, UNIT_OF, UNITS, AccElement, Geometry, Opcode
from qaccel.program import Program, ProgramBuilder, row_major, token_order

__all__ = ["SIZES", "coverage_goals", "program_features", "programs", "random_program"]


@dataclass(frozen=True)
class _Size:
    insns: tuple[int, int]  # instructions to draw before the closing token mixes
    dma_bytes: int  # DRAM bytes moved, besides one transfer longer than a burst
    max_k: int  # GEMM steps, LUT groups
    max_rows: int  # rows of one POST, rows one DMA moves (long transfers aside)
    mixes: tuple[int, int]  # compute instructions with chosen token flags, at the end


SIZES = {
    # a few thousand cycles: 20 of them fit a minute of RTL simulation
    "small": _Size((3, 8), 8 << 10, 6, 8, (2, 3)),
    "medium": _Size((20, 50), 64 << 10, 16, 16, (3, 5)),
}

UPSTREAM = {"load": None, "compute": "load", "store": "compute"}
DOWNSTREAM = {"load": "compute", "compute": "store", "store": None}
CHANNELS = (("load", "compute"), ("compute", "load"), ("compute", "store"), ("store", "compute"))
_INDEX = {u: i for i, u in enumerate(UNITS)}
BURST_4K = 4096  # AXI bursts must not cross it
MAX_BURST = 256  # beats of one AXI burst

# What a memory row holds, so that operands get sensible contents (tags; 0: never written).
_DATA, _SCALE, _ACC, _BIAS, _MULT, _SHIFT = range(1, 7)


# Token flag sets of a compute instruction that the data rarely asks for by itself (a
# load -> compute -> store pipeline gives pop_prev and pop_prev + push_next)
_MIXES = [
    [f for i, f in enumerate(TOKEN_FLAGS) if bits >> i & 1]
    for bits in range(16)
    if bits not in (0b0001, 0b1001)
]


def _pop_flag(channel) -> str:
    src, dst = channel
    return "pop_prev" if src == UPSTREAM[dst] else "pop_next"


def _push_flag(channel) -> str:
    src, dst = channel
    return "push_next" if dst == DOWNSTREAM[src] else "push_prev"


def _channels_in(unit: str) -> list[tuple[str, str]]:
    return [(v, unit) for v in (UPSTREAM[unit], DOWNSTREAM[unit]) if v is not None]


def _footprint(g: Geometry, op: Opcode, f: dict) -> list[tuple[str, int, int, bool]]:
    """(space, first, end, is_write) of every access, as the checker sees them."""
    if op in (Opcode.LOAD, Opcode.STORE):
        mem = "acc" if f["mem"] else "sp"
        rows = (mem, f["sram_addr"], f["sram_addr"] + f["y_size"] * f["x_size"])
        reach = (f["y_size"] - 1) * f["dram_stride"] + f["x_size"] * g.row_bytes(
            f["mem"], f["elem"]
        )
        dram = ("dram", f["dram_addr"], f["dram_addr"] + reach)
        load = op == Opcode.LOAD
        return [(*dram, not load), (*rows, load)]
    if op == Opcode.POST:
        out = [
            ("acc", f["acc_addr"], f["acc_addr"] + f["rows"], False),
            ("acc", f["param_addr"], f["param_addr"] + 3, False),
            ("sp", f["out_addr"], f["out_addr"] + f["rows"], True),
        ]
        if f["residual"]:
            out.append(("sp", f["res_addr"], f["res_addr"] + f["rows"], False))
        return out
    if op == Opcode.GEMM:
        spec = g.array_modes[f["mode"]]
        os = f["dataflow"] == 1
        tiles = g.gemm_tiles(f["dataflow"], f["m"], f["k"])
        a = tiles * (f["k"] if os else f["m"])  # OS: k rows per row tile; WS: m per weight tile
        out = [
            ("sp", f["a_addr"], f["a_addr"] + a, False),
            ("sp", f["w_addr"], f["w_addr"] + f["k"], False),
        ]
        if os and spec.block:
            scales = (tiles + 1) * -(-f["k"] // spec.block)  # every row tile's, the columns'
            out.append(("sp", f["scale_addr"], f["scale_addr"] + scales, False))
    else:
        planes = g.lut_planes(f["mode"])
        out = [
            ("sp", f["a_addr"], f["a_addr"] + f["k"], False),
            ("sp", f["w_addr"], f["w_addr"] + f["k"] * planes, False),
        ]
    acc = ("acc", f["acc_addr"], f["acc_addr"] + f["m"])
    return [*out, *([(*acc, False)] if f["accumulate"] else []), (*acc, True)]


def _gemm_choices(g: Geometry) -> list[tuple[int, str]]:
    """Every (array mode, dataflow) a GEMM may run: MX modes output-stationary only, and
    weight-stationary only where a column of ``rows`` steps cannot saturate."""
    return [
        (i, df)
        for i, spec in enumerate(g.array_modes)
        for df in ("os", "ws")
        if g.dataflow in ("both", df)
        and not (df == "ws" and (spec.block or g.rows > g.max_steps(i)))
    ]


def _overlap(a, b) -> bool:
    return a[0] == b[0] and a[1] < b[2] and b[1] < a[2] and a[2] > a[1] and b[2] > b[1]


@dataclass
class _Draft:
    op: Opcode
    fields: dict
    footprint: list
    flags: dict = field(default_factory=lambda: dict.fromkeys(TOKEN_FLAGS, False))
    clock: list = field(default_factory=lambda: [0, 0, 0])  # per unit: instructions seen
    pos: int = 0  # 1-based position in its unit's queue

    @property
    def unit(self) -> str:
        return UNIT_OF[self.op]


class _Generator:
    """One program being drawn: instructions as drafts whose push flags later instructions
    may still set, the rows written so far and what they hold, the DRAM and DMA budget."""

    def __init__(self, cfg: qconfig.AcceleratorConfig, rng: random.Random, size: _Size):
        self.b = ProgramBuilder(cfg)
        self.g = g = self.b.geometry
        self.rng, self.size = rng, size
        self.np_rng = np.random.default_rng(rng.getrandbits(64))
        self.banks = {"sp": cfg.memory.scratchpad_banks, "acc": cfg.memory.accumulator_banks}
        self.rows = {"sp": g.sp_rows, "acc": g.acc_rows}
        self.tags = {s: np.zeros(n, dtype=np.int8) for s, n in self.rows.items()}
        self.drafts: list[_Draft] = []
        self.by_unit: dict[str, list[int]] = {u: [] for u in UNITS}
        self.pushes: dict[tuple, list[int]] = {ch: [] for ch in CHANNELS}
        self.inputs: dict[str, np.ndarray] = {}
        self.stores: list[dict] = []  # fields of every STORE, for reloads
        self.dma = 0
        self.long_left = 1  # one transfer longer than a burst per program, off the budget
        self.no_loads = False  # operands must already be there (bursts, token mixes)
        self.fresh: tuple[int, int] | None = None  # (first, count): rows operands come from
        # channels the next instruction into them pops if it can (from this one, if given);
        # while any is set, no other pops are added at random
        self.eager: dict[tuple[str, str], int | None] = {}
        # quiet: no pops the data does not need, and rows picked so that it needs few
        self.quiet = False
        self.extra_tokens = rng.choice([0.1, 0.3, 0.6])  # chance of a pop no data needs

    # --- tokens and hazards ---------------------------------------------------------------

    def _last(self, unit: str) -> list[int]:
        units = self.by_unit[unit]
        return list(self.drafts[units[-1]].clock) if units else [0, 0, 0]

    def _last_push(self, channel) -> int:
        pushes = self.pushes[channel]
        return self.drafts[pushes[-1]].pos if pushes else 0

    def _recompute(self) -> None:
        """Every clock again, in program order (every pop's push comes earlier)."""
        last = {u: [0, 0, 0] for u in UNITS}
        popped = dict.fromkeys(CHANNELS, 0)
        count = dict.fromkeys(UNITS, 0)
        for d in self.drafts:
            vc = list(last[d.unit])
            for ch in _channels_in(d.unit):
                if d.flags[_pop_flag(ch)]:
                    z = self.drafts[self.pushes[ch][popped[ch]]]
                    popped[ch] += 1
                    vc = [max(a, b) for a, b in zip(vc, z.clock, strict=True)]
            count[d.unit] += 1
            vc[_INDEX[d.unit]] = d.pos = count[d.unit]
            d.clock = last[d.unit] = vc

    def _plan(self, unit: str, footprint):
        """The pops that order every conflicting earlier instruction before a new one of
        ``unit`` (plus random extra ones), and maybe a relay through the latest compute
        instruction; None when that cannot be done."""
        need = dict.fromkeys(UNITS, 0)  # per unit: the latest position that must come first
        for d in self.drafts:
            if d.unit != unit and any(
                (a[3] or b[3]) and _overlap(a, b) for a in d.footprint for b in footprint
            ):
                need[d.unit] = max(need[d.unit], d.pos)
        base = self._last(unit)
        relay = None
        far = {"load": "store", "store": "load"}.get(unit)
        if far and need[far] > base[_INDEX[far]]:
            # a load after a store (or the reverse) is ordered through the compute unit
            computes = self.by_unit["compute"]
            if not computes:
                return None
            covering = [c for c in computes if self.drafts[c].clock[_INDEX[far]] >= need[far]]
            if covering:
                need["compute"] = max(need["compute"], self.drafts[covering[0]].pos)
            else:
                c = computes[-1]
                ch = (far, "compute")
                if self.drafts[c].flags[_pop_flag(ch)]:
                    return None
                after = max(need[far], self._last_push(ch) + 1)
                zs = [z for z in self.by_unit[far] if self.drafts[z].pos >= after and z < c]
                if not zs:
                    return None
                relay = (ch, self.rng.choice(zs), c)
                need["compute"] = max(need["compute"], self.drafts[c].pos)
        pops = {}
        for ch in _channels_in(unit):
            v = ch[0]
            if need[v] > base[_INDEX[v]]:
                after = need[v]  # > the last push on ch: its pop already ordered that one
            elif ch in self.eager or (
                not (self.eager or self.quiet) and self.rng.random() < self.extra_tokens
            ):
                after = self._last_push(ch) + 1
            else:
                continue
            zs = [z for z in self.by_unit[v] if self.drafts[z].pos >= after]
            if not zs:
                if need[v] > base[_INDEX[v]]:
                    return None
            elif self.eager.get(ch) in zs:
                pops[ch] = self.eager[ch]
            elif need[v] > base[_INDEX[v]] and self.rng.random() < 0.7:
                pops[ch] = zs[0]  # as early as the data allows, as a compiler would
            else:
                # the latest one half the time, so that one instruction often pushes to both
                # neighbours
                pops[ch] = zs[-1] if self.rng.random() < 0.5 else self.rng.choice(zs)
        return pops, relay

    def emit(self, op: Opcode, fields: dict) -> int | None:
        """Append the instruction with the tokens it needs; None if it cannot be ordered."""
        unit = UNIT_OF[op]
        footprint = _footprint(self.g, op, fields)
        plan = self._plan(unit, footprint)
        if plan is None:
            return None
        pops, relay = plan
        if relay is not None:
            ch, z, c = relay
            self.drafts[z].flags[_push_flag(ch)] = True
            self.pushes[ch].append(z)
            self.drafts[c].flags[_pop_flag(ch)] = True
        d = _Draft(op, fields, footprint)
        for ch, z in pops.items():
            self.drafts[z].flags[_push_flag(ch)] = True
            self.pushes[ch].append(z)
            d.flags[_pop_flag(ch)] = True
        self.by_unit[unit].append(len(self.drafts))
        self.drafts.append(d)
        self._recompute()
        for ch in _channels_in(unit):
            self.eager.pop(ch, None)
        return len(self.drafts) - 1

    # --- rows -----------------------------------------------------------------------------

    def _settled(self, space: str, unit: str, write: bool) -> np.ndarray:
        """Rows that the next instruction of ``unit`` may read (``write``: write) without a
        token: every other unit's write to them (access, to write) is already ordered."""
        clock = self._last(unit)
        ok = np.ones(self.rows[space], dtype=bool)
        for d in self.drafts:
            if d.unit != unit and d.pos > clock[_INDEX[d.unit]]:
                for s, lo, hi, w in d.footprint:
                    if s == space and (w or write):
                        ok[lo:hi] = False
        return ok

    def _written(self, space: str, n: int, tags=None, unit: str = "compute") -> list[int]:
        """Starts of ``n`` consecutive written rows (tagged ``tags[i]`` in order, if given);
        quiet, ones ``unit`` can read without a token if there are any."""
        t = self.tags[space]
        if n > len(t):
            return []
        hits = np.ones(len(t) - n + 1, dtype=bool)
        for i in range(n):
            row = t[i : len(t) - n + 1 + i]
            hits &= row > 0 if tags is None else row == tags[i]
        if self.quiet:
            settled = self._settled(space, unit, write=False)
            calm = hits.copy()
            for i in range(n):
                calm &= settled[i : len(t) - n + 1 + i]
            hits = calm if calm.any() else hits
        return np.nonzero(hits)[0].tolist()

    def _targets(self, space: str, n: int, unit: str, tries: int = 6) -> list[int]:
        """Candidate first rows for ``n`` rows ``unit`` writes: fresh ones, ones in the bank of
        a row another unit used last (contention), anywhere (reuse: tokens against earlier
        uses)."""
        rows, banks = self.rows[space], self.banks[space]
        if n > rows:
            return []
        t = self.tags[space]
        free = np.concatenate([[0], np.cumsum(t == 0)])
        fresh = np.nonzero(free[n:] - free[:-n] == n)[0].tolist()
        recent = [a[1] for d in self.drafts[-3:] for a in d.footprint if a[0] == space]
        out = []
        if self.quiet:  # rows the writer may take without a token first: no push on anyone
            ok = np.concatenate([[0], np.cumsum(self._settled(space, unit, write=True))])
            calm = np.nonzero(ok[n:] - ok[:-n] == n)[0].tolist()
            out = [self.rng.choice(calm) for _ in range(3)] if calm else []
        for _ in range(tries):
            r = self.rng.random()
            if r < 0.45 and fresh:
                out.append(self.rng.choice(fresh))
            elif r < 0.7 and recent:
                bank = self.rng.choice(recent) % banks
                top = (rows - n - bank) // banks
                if top >= 0:
                    out.append(bank + banks * self.rng.randint(0, top))
            else:
                out.append(self.rng.randint(0, rows - n))
        return out

    # --- DMA ------------------------------------------------------------------------------

    def _shape(self, n: int) -> tuple[int, int]:
        """(y_size, x_size) with y * x = n, y mostly small: each DRAM row is a DMA command
        that waits for the DRAM's latency."""
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        if self.rng.random() < 0.9:
            divisors = [d for d in divisors if d <= 3]
        y = self.rng.choice(divisors)
        return y, n // y

    def _long_rows(self, mem: int, elem: int) -> int | None:
        """Memory rows of one DRAM row longer than a burst, if the memory holds them."""
        g = self.g
        row = g.row_bytes(mem, elem)
        x = MAX_BURST * g.data_bytes // row + 1 + self.rng.randint(0, 2)
        return x if x <= self.rows["acc" if mem else "sp"] else None

    def _dram(self, y: int, row_len: int, *, stride0: bool) -> tuple[int, int]:
        """A fresh DRAM region for ``y`` rows of ``row_len`` bytes: (address, stride); rows
        contiguous or with gaps, sometimes the first one across a 4 KiB boundary."""
        db = self.g.data_bytes
        r = self.rng.random()
        if y == 1:
            stride = self.rng.choice([0, row_len])
        elif stride0 and r < 0.1:
            stride = 0  # every DRAM row is the same bytes
        elif r < 0.55:
            stride = row_len + db * self.rng.randint(1, 3)
        else:
            stride = row_len
        reach = (y - 1) * stride + row_len
        if row_len >= 2 * db and self.rng.random() < 0.25:
            base = self.b.alloc(reach + BURST_4K, align=BURST_4K)
            return base + BURST_4K - db * self.rng.randint(1, row_len // db - 1), stride
        return self.b.alloc(reach), stride

    def _content(self, kind: int, mem: int, elem: int, n: int) -> list[bytes]:
        """Bytes of ``n`` memory rows that make sense as ``kind``."""
        g, rng = self.g, self.np_rng
        row = g.row_bytes(mem, elem)
        if mem == 0:
            if kind == _SCALE:  # E8M0 codes whose products mostly land in the MX window
                codes = 127 + rng.integers(-20, 4, (n, row))
                codes[rng.random((n, row)) < 0.02] = 0xFF
                return [bytes(r.astype(np.uint8)) for r in codes]
            return [bytes(r) for r in rng.integers(0, 256, (n, row), dtype=np.uint8)]
        size = g.acc_elem_bytes if elem == AccElement.NATIVE else 4
        out = []
        for i in range(n):
            if kind == _ACC:
                values = rng.integers(-(1 << 20), 1 << 20, g.acc_cols)
            else:  # POST's parameter rows: bias, multiplier b, shift c
                lo, hi = {_BIAS: (-1024, 1024), _MULT: (1, 1 << 16), _SHIFT: (8, 24)}[kind + i]
                values = rng.integers(lo, hi, g.acc_cols)
            data = b"".join(int(v).to_bytes(size, "little", signed=True) for v in values)
            out.append(data.ljust(row, b"\0"))
        return out

    def load(self, mem: int, n: int | None = None, kind: int = _DATA, elem=None) -> int | None:
        """A LOAD of ``n`` rows (random if None) of ``kind`` contents; its first row."""
        g, rng = self.g, self.rng
        if self.no_loads:
            return None
        if elem is None:
            elem = 0 if mem == 0 else rng.choice(list(AccElement))
        if mem and kind == _DATA:
            kind = _ACC
        row = g.row_bytes(mem, elem)
        long = None
        if n is None and self.long_left and rng.random() < 0.15:
            long = self._long_rows(mem, elem)
        if long:
            y, x = 1, long
        elif n is None:
            y, x = rng.randint(1, 3), rng.randint(1, max(1, self.size.max_rows // 2))
        else:
            y, x = self._shape(n)
        if kind == _BIAS:
            y, x = rng.choice([(1, 3), (3, 1)])
        n, row_len = y * x, x * row
        if not long and self.dma + y * row_len > self.size.dma_bytes:
            return None
        addr, stride = self._dram(y, row_len, stride0=kind == _DATA)
        rows = self._content(kind, mem, elem, x if stride == 0 else n)
        for start in self._targets("acc" if mem else "sp", n, "load"):
            fields = dict(
                mem=mem,
                elem=int(elem),
                sram_addr=start,
                dram_addr=addr,
                dram_stride=stride,
                y_size=y,
                x_size=x,
            )
            if self.emit(Opcode.LOAD, fields) is None:
                continue
            pitch = stride or row_len
            lines = [b"".join(rows[i * x : (i + 1) * x]) for i in range(len(rows) // x)]
            name = f"in{len(self.inputs)}"
            self.b.tensor(row_major(name, (len(lines), row_len), "uint8", addr, pitch=pitch))
            data = np.frombuffer(b"".join(lines), dtype=np.uint8)
            self.inputs[name] = data.reshape(len(lines), row_len).copy()
            self.dma += y * row_len
            self.long_left -= bool(long)
            tags = [_BIAS, _MULT, _SHIFT] if kind == _BIAS else [kind] * n
            if stride == 0:
                tags = tags[:x] * y
            self.tags["acc" if mem else "sp"][start : start + n] = tags
            return start
        return None

    def store(self, prefer=None, again: bool = False) -> int | None:
        """A STORE of written rows (``prefer``: (space, first, count) to take them from;
        ``again``: those of the last STORE, with no token) into a fresh output tensor."""
        if again or (prefer is None and self.stores and self.rng.random() < 0.3):
            if not self.stores:
                return None
            last = self.stores[-1]  # the same rows again: ordered already, no token needed
            n = last["y_size"] * last["x_size"]
            quiet, self.quiet = self.quiet, True
            try:
                return self._store(("acc" if last["mem"] else "sp", last["sram_addr"], n))
            finally:
                self.quiet = quiet
        return self._store(prefer or self.rng.choice(["sp", "acc"]))

    def _store(self, rows) -> int | None:
        """``rows``: (space, first, count), or a space to take any written rows from."""
        g, rng = self.g, self.rng
        space = rows if isinstance(rows, str) else rows[0]
        mem = int(space == "acc")
        elem = 0 if mem == 0 else rng.choice(list(AccElement))
        row = g.row_bytes(mem, elem)
        long = self._long_rows(mem, elem) if self.long_left and rng.random() < 0.15 else None
        if isinstance(rows, tuple):
            long = None
            y, x = self._shape(rows[2])
            starts = [rows[1]]
        elif long and self._written(space, long, unit="store"):
            y, x = 1, long
            starts = self._written(space, long, unit="store")
        else:
            long = None
            y, x = rng.randint(1, 3), rng.randint(1, max(1, self.size.max_rows // 2))
            starts = self._written(space, y * x, unit="store")
            if not starts:
                y, x = 1, 1
                starts = self._written(space, 1, unit="store")
        if not starts or (not long and self.dma + y * x * row > self.size.dma_bytes):
            return None
        row_len = x * row
        addr, stride = self._dram(y, row_len, stride0=False)
        for start in rng.sample(starts, min(4, len(starts))):
            fields = dict(
                mem=mem,
                elem=int(elem),
                sram_addr=start,
                dram_addr=addr,
                dram_stride=stride,
                y_size=y,
                x_size=x,
            )
            if self.emit(Opcode.STORE, fields) is None:
                continue
            name = f"out{len(self.stores)}"
            pitch = stride or row_len
            self.b.tensor(row_major(name, (y, row_len), "uint8", addr, pitch=pitch), output=True)
            self.stores.append(fields)
            self.dma += y * row_len
            self.long_left -= bool(long)
            return start
        return None

    def reload(self) -> int | None:
        """A LOAD of what an earlier STORE wrote: ordered after it through the compute unit
        (a compute instruction that pops a store token first, if none came after it)."""
        if self.no_loads:
            return None
        if not self.stores:
            if not self.by_unit["compute"]:
                self.compute()
            if self.store() is None:
                return None
        f = dict(self.rng.choice(self.stores))
        computes = self.by_unit["compute"]
        if not computes or computes[-1] < self.by_unit["store"][-1]:
            self.steer(self.compute, {("store", "compute"): None})
        g = self.g
        n, space = f["y_size"] * f["x_size"], "acc" if f["mem"] else "sp"
        if self.dma + f["y_size"] * f["x_size"] * g.row_bytes(f["mem"], f["elem"]) > (
            self.size.dma_bytes
        ):
            return None
        for start in self._targets(space, n, "load"):
            if self.emit(Opcode.LOAD, f | {"sram_addr": start}) is not None:
                self.tags[space][start : start + n] = _ACC if f["mem"] else _DATA
                self.dma += f["y_size"] * f["x_size"] * g.row_bytes(f["mem"], f["elem"])
                return start
        return None

    # --- compute --------------------------------------------------------------------------

    def _operand(self, n: int, kind: int = _DATA) -> int | None:
        """First row of ``n`` written scratchpad rows: existing ones or a new LOAD."""
        if n == 0:
            return 0
        if self.fresh is not None and n <= self.fresh[1]:
            return self.fresh[0] + self.rng.randint(0, self.fresh[1] - n)
        tagged = self._written("sp", n, [kind] * n)
        written = tagged or (self._written("sp", n) if kind == _DATA or self.no_loads else [])
        if written and (self.no_loads or self.rng.random() < 0.6):
            return self.rng.choice(written)
        return self.load(0, n, kind)

    def _operand_rows(self) -> int:
        """Scratchpad rows that hold the operands of most compute instructions."""
        # two weight-stationary tiles fit too
        return min(self.rows["sp"] // 2, max(2 * self.g.rows + 2, 4 * self.size.max_k))

    def _acc_out(self, op: Opcode, fields: dict, m: int, accumulate: bool) -> int | None:
        """Emit a GEMM or LUT_GEMM with its ``m`` result rows placed somewhere it can write."""
        starts = self._written("acc", m) if accumulate else []
        if starts:
            starts = self.rng.sample(starts, min(4, len(starts)))
        else:
            accumulate = False
            starts = self._targets("acc", m, "compute")
        for start in starts:
            index = self.emit(op, fields | dict(acc_addr=start, m=m, accumulate=int(accumulate)))
            if index is not None:
                self.tags["acc"][start : start + m] = _ACC
                return index
        return None

    def _gemm_shape(self, mode: int, df: str) -> tuple[int, int]:
        """(m, k) of a GEMM of one tile or of two or three back to back, half the time.
        Output-stationary: m up to three times ``rows``, the last row tile often partial,
        k as ever (MX modes: sometimes two blocks, the second partial). Weight-stationary:
        k = tiles * ``rows``, m from 1 (every tile adding into the same rows) to a few times
        ``rows``, fewer the more tiles."""
        g, rng = self.g, self.rng
        spec = g.array_modes[mode]
        tiles = rng.choice([1, 1, 2, 3])
        if df == "os":
            if tiles == 1:
                m = g.rows if rng.random() < 0.4 else rng.randint(1, g.rows)
            elif rng.random() < 0.35:
                m = tiles * g.rows
            else:
                m = rng.randint((tiles - 1) * g.rows + 1, tiles * g.rows)
            top = min(g.max_steps(mode), self.size.max_k)
            if spec.block and rng.random() < 0.3:
                top = min(g.max_steps(mode), spec.block + 8)  # two blocks, the second partial
            k = rng.randint(max(1, top - 8), top) if top > spec.block > 0 else rng.randint(1, top)
        else:
            k = tiles * g.rows
            r = rng.random()
            if r < 0.25:
                m = 1
            elif r < 0.45:
                m = g.rows
            else:
                m = rng.randint(1, max(1, 3 * g.rows // tiles))
        return min(m, g.acc_rows), k

    def _gemm_rows(self, mode: int, df: str, m: int, k: int) -> tuple[int, int, int]:
        """Scratchpad rows of a GEMM's activations, weights and MX scales."""
        g = self.g
        tiles = g.gemm_tiles(int(df == "os"), m, k)
        if df == "ws":
            return tiles * m, k, 0
        block = g.array_modes[mode].block
        return tiles * k, k, (tiles + 1) * -(-k // block) if block else 0

    def gemm(self) -> int | None:
        g, rng = self.g, self.rng
        choices = _gemm_choices(g)
        if not choices:
            return None
        mode, df = rng.choice(choices)
        for _ in range(8):
            m, k = self._gemm_shape(mode, df)
            a_rows, w_rows, scale_rows = self._gemm_rows(mode, df, m, k)
            if self.fresh is None or max(a_rows, w_rows, scale_rows) <= self.fresh[1]:
                break  # operands from the fresh rows, if there are any
        a = self._operand(a_rows)
        w = self._operand(w_rows) if a is not None else None
        s = self._operand(scale_rows, _SCALE) if w is not None else None
        if s is None:
            return None
        fields = dict(mode=mode, dataflow=int(df == "os"), a_addr=a, w_addr=w, scale_addr=s, k=k)
        return self._acc_out(Opcode.GEMM, fields, m, rng.random() < 0.4)

    def lut_gemm(self) -> int | None:
        g, rng = self.g, self.rng
        mode = rng.randrange(len(g.lut_modes))
        planes = g.lut_planes(mode)
        k = rng.randint(1, min(g.lut_max_groups(mode), self.size.max_k))
        m = g.lut_tile_m if rng.random() < 0.4 else rng.randint(1, g.lut_tile_m)
        a = self._operand(k)
        w = self._operand(k * planes) if a is not None else None
        if w is None:
            return None
        fields = dict(mode=mode, a_addr=a, w_addr=w, k=k)
        return self._acc_out(Opcode.LUT_GEMM, fields, m, rng.random() < 0.4)

    def post(self) -> int | None:
        g, rng = self.g, self.rng
        rows = rng.randint(1, min(self.size.max_rows, g.acc_rows - 3, g.sp_rows // 2))
        acc = self._written("acc", rows)
        acc = rng.choice(acc) if acc else self.load(1, rows, _ACC)
        params = self._written("acc", 3, [_BIAS, _MULT, _SHIFT])
        params = rng.choice(params) if params else self.load(1, 3, _BIAS)
        residual = rng.random() < 0.5
        res = self._operand(rows) if residual else 0
        if acc is None or params is None or res is None:
            return None
        signed = rng.random() < 0.5
        out_min, out_max = (-128, 127) if signed else (0, 255)
        zero_point = rng.randint(-64, 64)
        if rng.random() < 0.5:
            lo, hi = out_min, out_max
        else:
            lo, hi = sorted(rng.randint(out_min, out_max) for _ in range(2))
        fields = dict(
            acc_addr=acc,
            param_addr=params,
            res_addr=res,
            rows=rows,
            residual=int(residual),
            res_shift=rng.randint(0, 4),
            out_signed=int(signed),
            zero_point=zero_point,
            lo=lo,
            hi=hi,
        )
        starts = self._targets("sp", rows, "compute")
        if residual and rng.random() < 0.2:
            starts.insert(0, res)  # in place: row i's residual is read before row i is written
        for out in starts:
            if residual and out != res and out < res + rows and res < out + rows:
                continue  # a partial overlap would read rows this instruction wrote
            if self.emit(Opcode.POST, fields | {"out_addr": out}) is not None:
                self.tags["sp"][out : out + rows] = _DATA
                return out
        return None

    # --- programs -------------------------------------------------------------------------

    def compute(self, post: bool = True) -> int | None:
        kinds = [self.post] * 2 if post else []
        if self.g.has_array:
            kinds += [self.gemm] * 3
        if self.g.has_lut:
            kinds += [self.lut_gemm] * 3
        return self.rng.choice(kinds)()

    def steer(self, action, eager: dict) -> int | None:
        """Run ``action`` with ``eager`` pops for the instruction it emits into them."""
        self.eager = dict(eager)
        try:
            return action()
        finally:
            self.eager = {}

    def _ready(self, ch) -> bool:
        """Whether an instruction of ``ch[0]`` came after the last push on ``ch``."""
        units = self.by_unit[ch[0]]
        return bool(units) and self.drafts[units[-1]].pos > self._last_push(ch)

    def token_mix(self) -> None:
        """A compute instruction with a chosen set of token flags: a STORE and a LOAD before
        it to pop from, a LOAD and a STORE after it that pop its pushes, nothing else that
        adds a token to it."""
        want = self.rng.choice(_MIXES)
        quiet, self.quiet = self.quiet, True
        try:
            self._token_mix(want)
        finally:
            self.quiet = quiet

    def _token_mix(self, want: list[str]) -> None:
        if "pop_prev" not in want:
            # operands loaded and ordered (by another compute instruction) before it
            start = self.load(0, self._operand_rows())
            if start is not None:
                self.fresh = (start, self._operand_rows())
                self.compute(post=False)
        if "pop_next" in want:
            for make in (lambda: self.store(again=True), self.store, self.compute, self.store):
                if self._ready(("store", "compute")):
                    break
                make()
        if "pop_prev" in want and not self._ready(("load", "compute")):
            self.load(0)
        eager = {}
        for flag, ch in (("pop_next", ("store", "compute")), ("pop_prev", ("load", "compute"))):
            if flag in want and self._ready(ch):
                eager[ch] = self.by_unit[ch[0]][-1]  # the latest: earlier ones keep their flags
        computes = len(self.by_unit["compute"])
        self.no_loads = "pop_prev" not in want
        try:
            self.steer(lambda: self.compute(post=False), eager)
        finally:
            self.no_loads, self.fresh = False, None
        if len(self.by_unit["compute"]) == computes:
            return
        c = self.by_unit["compute"][-1]
        if "push_prev" in want:
            self.steer(lambda: self.load(0), {("compute", "load"): c})
        if "push_next" in want:
            self.steer(self.store, {("compute", "store"): c})

    def burst(self) -> None:
        """Several instructions of one unit back to back; the first of a compute burst waits
        for a LOAD while fetch fills the compute queue behind it."""
        rng = self.rng
        unit = rng.choice(["compute", "compute", "compute", "load", "store"])
        count = rng.randint(QUEUE_DEPTH + 1, QUEUE_DEPTH + 2)
        if unit == "compute":
            n = self._operand_rows()
            start = self.load(0, n)
            if start is None:
                return
            self.no_loads, self.fresh = True, (start, n)  # every one reads the new rows
            try:
                for _ in range(count):
                    self.compute(post=False)
            finally:
                self.no_loads, self.fresh = False, None
        else:
            for _ in range(count):
                if unit == "load":
                    self.load(0)
                else:
                    self.store()

    def run(self) -> None:
        rng = self.rng
        target = rng.randint(*self.size.insns)
        actions = [
            (self.compute, 4),
            (self.post, 2),
            (lambda: self.load(rng.randint(0, 1)), 2),
            (lambda: self.load(1, kind=_BIAS), 1),
            (self.store, 3),
            (self.reload, 2),
            (self.burst, 3),
            (self.token_mix, 3),
        ]
        funcs, weights = zip(*actions, strict=True)
        for _ in range(4 * target):
            if len(self.drafts) >= target - 2:
                break
            rng.choices(funcs, weights)[0]()
        if rng.random() < 0.8:
            # last, and only the tokens the data needs around them, so that no later
            # instruction adds a push to their compute instructions
            self.quiet = True
            for _ in range(rng.randint(*self.size.mixes)):
                self.token_mix()
            if rng.random() < 0.5:
                self.store(again=True)  # a STORE with no token at all, last
            return
        # the results of the last compute instruction leave through a STORE, unless some
        # came after it
        computes = self.by_unit["compute"]
        if computes and all(d.unit != "store" for d in self.drafts[computes[-1] + 1 :]):
            space, lo, hi, _ = next(a for a in self.drafts[computes[-1]].footprint if a[3])
            self.store(prefer=(space, lo, hi - lo))

    def build(self) -> Program:
        for d in self.drafts:
            self.b.emit(d.op, **d.fields, **d.flags)
        return self.b.build()


def random_program(
    cfg: qconfig.AcceleratorConfig, rng: random.Random | int, *, size: str = "small"
) -> tuple[Program, dict[str, np.ndarray]]:
    """A random Program for ``cfg`` that passes ``check_program``, and its inputs (name ->
    uint8 codes: the bytes each LOAD reads). The same seed gives the same program and inputs.
    ``size``: "small" (a handful of instructions, a few KiB of DMA) or "medium" (tens)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    seed = None
    if not isinstance(rng, random.Random):
        seed, rng = rng, random.Random(rng)
    gen = _Generator(cfg, rng, SIZES[size])
    gen.run()
    gen.b.notes = {"random_program": {"seed": seed, "size": size}}
    return gen.build(), gen.inputs


def programs(cfg: qconfig.AcceleratorConfig, *, size: str = "small"):
    """A hypothesis strategy of (Program, inputs) pairs drawn by ``random_program``."""
    from hypothesis import strategies as st  # a test dependency only

    return st.integers(0, 2**32 - 1).map(lambda seed: random_program(cfg, seed, size=size))


# --- coverage --------------------------------------------------------------------------------


def _flag_combos(unit: str) -> list[str]:
    legal = [
        f
        for f in TOKEN_FLAGS
        if not (unit == "load" and "prev" in f) and not (unit == "store" and "next" in f)
    ]
    combos = []
    for bits in range(1 << len(legal)):
        on = [f for i, f in enumerate(legal) if bits >> i & 1]
        combos.append(f"tokens.{unit}." + ("+".join(on) or "none"))
    return combos


def coverage_goals(cfg: qconfig.AcceleratorConfig) -> set[str]:
    """The features (``program_features``) the generator aims to cover on ``cfg``."""
    g = Geometry.of(cfg)
    goals = {
        *(f"{op}.{mem}" for op in ("load", "store") for mem in ("sp", "acc.native", "acc.int32")),
        "dma.y>1",
        "dma.x>1",
        "dma.gap",
        "dma.4k",
        "post.residual",
        "post.plain",
        "post.signed",
        "post.unsigned",
        "order.load->store",
        "order.store->load",
        "dram.reload",
        "concurrent.same_bank",
        "concurrent.tokenless",
        "burst",
        "queue.full",
        *(c for u in UNITS for c in _flag_combos(u)),
    }
    long_fits = any(
        (MAX_BURST * g.data_bytes // g.row_bytes(mem, elem) + 1) <= g.mem_rows(mem)
        for mem, elem in ((0, 0), (1, AccElement.NATIVE), (1, AccElement.INT32))
    )
    if long_fits:
        goals.add("dma.long")
    if g.has_array:
        goals |= {"gemm.accumulate", "gemm.overwrite", "gemm.m<rows", "gemm.m=rows"}
        goals |= {"gemm.m>rows"} if g.acc_rows > g.rows else set()
        choices = _gemm_choices(g)
        goals |= {f"gemm.{g.array_modes[i].name}.{df}" for i, df in choices}
        if any(df == "os" for _, df in choices) and g.acc_rows > g.rows:
            goals.add("gemm.os.tiles>1")
        if any(df == "ws" for _, df in choices):
            goals |= {"gemm.ws.tiles>1", "gemm.ws.tiles>1.m=1"}
        if any(spec.block for spec in g.array_modes):
            goals.add("gemm.mx_scales")
            if g.acc_rows > g.rows:
                goals.add("gemm.mx_scales.tiles>1")
    goals |= {f"lut.{name}" for name in g.lut_modes}
    return goals


def program_features(program: Program) -> set[str]:
    """What ``program`` exercises, named as in ``coverage_goals``."""
    g = program.geometry
    body = program.body
    out = set()
    for insn in body:
        f = insn.fields
        out.add(
            f"tokens.{insn.unit}."
            + ("+".join(x for x in TOKEN_FLAGS if getattr(insn, x)) or "none")
        )
        if insn.opcode in (Opcode.LOAD, Opcode.STORE):
            mem = "sp" if not f["mem"] else f"acc.{AccElement(f['elem']).name.lower()}"
            out.add(f"{insn.opcode.name.lower()}.{mem}")
            row_len = f["x_size"] * g.row_bytes(f["mem"], f["elem"])
            out |= {"dma.y>1"} if f["y_size"] > 1 else set()
            out |= {"dma.x>1"} if f["x_size"] > 1 else set()
            if f["y_size"] > 1 and f["dram_stride"] > row_len:
                out.add("dma.gap")
            if row_len // g.data_bytes > MAX_BURST:
                out.add("dma.long")
            for y in range(f["y_size"]):
                start = f["dram_addr"] + y * f["dram_stride"]
                if start // BURST_4K != (start + row_len - 1) // BURST_4K:
                    out.add("dma.4k")
        elif insn.opcode == Opcode.GEMM:
            spec = g.array_modes[f["mode"]]
            out.add(f"gemm.{spec.name}.{'os' if f['dataflow'] else 'ws'}")
            out.add("gemm.accumulate" if f["accumulate"] else "gemm.overwrite")
            out.add(
                "gemm.m<rows"
                if f["m"] < g.rows
                else "gemm.m=rows"
                if f["m"] == g.rows
                else "gemm.m>rows"
            )
            df = "os" if f["dataflow"] else "ws"
            if g.gemm_tiles(f["dataflow"], f["m"], f["k"]) > 1:
                out.add(f"gemm.{df}.tiles>1")
                if df == "ws" and f["m"] == 1:
                    out.add("gemm.ws.tiles>1.m=1")  # every tile adds into the same row
            if spec.block:
                out.add("gemm.mx_scales")
                if g.gemm_tiles(f["dataflow"], f["m"], f["k"]) > 1:
                    out.add("gemm.mx_scales.tiles>1")
        elif insn.opcode == Opcode.LUT_GEMM:
            out.add(f"lut.{g.lut_modes[f['mode']]}")
        elif insn.opcode == Opcode.POST:
            out.add("post.residual" if f["residual"] else "post.plain")
            out.add("post.signed" if f["out_signed"] else "post.unsigned")
    clock, pos = _clocks(body)

    def before(x: int, y: int) -> bool:
        return clock[y][_INDEX[body[x].unit]] >= pos[x]

    prints = [_footprint(g, insn.opcode, insn.fields) for insn in body]
    memory = program.config.memory
    banks = {"sp": memory.scratchpad_banks, "acc": memory.accumulator_banks}
    for i, x in enumerate(body):
        for j in range(i + 1, len(body)):
            y = body[j]
            if x.unit == y.unit:
                continue
            if before(i, j):
                if x.unit == "load" and y.unit == "store":
                    out.add("order.load->store")
                if x.unit == "store" and y.unit == "load":
                    out.add("order.store->load")
                if (x.opcode, y.opcode) == (Opcode.STORE, Opcode.LOAD) and any(
                    _overlap(a, b) for a in prints[i] for b in prints[j] if a[0] == "dram"
                ):
                    out.add("dram.reload")
                continue
            if j - i > QUEUE_DEPTH:
                continue  # too far apart in the stream to be sure they overlap in time
            if not any(getattr(x, f) for f in TOKEN_FLAGS) or not any(
                getattr(y, f) for f in TOKEN_FLAGS
            ):
                out.add("concurrent.tokenless")
            for a in prints[i]:
                for b in prints[j]:
                    if a[0] == b[0] != "dram" and _banks(a, banks[a[0]]) & _banks(b, banks[a[0]]):
                        out.add("concurrent.same_bank")
    run = 1
    for i in range(1, len(body) + 1):
        if i < len(body) and body[i].unit == body[i - 1].unit:
            run += 1
            continue
        first = body[i - run]
        if run >= 3:
            out.add("burst")
        if run > QUEUE_DEPTH and (first.pop_prev or first.pop_next):
            out.add("queue.full")
        run = 1
    return out


def _banks(access, banks: int) -> set[int]:
    _, lo, hi, _ = access
    return {r % banks for r in range(lo, min(hi, lo + banks))}


def _clocks(body) -> tuple[list[list[int]], list[int]]:
    """Per instruction: the vector clock (instructions of each unit that happen before it,
    itself included) and its position in its unit, from the tokens (as the checker does)."""
    order = token_order(body)
    pushes: dict[tuple, list[int]] = {}
    popped: dict[tuple, int] = {}
    last = {u: [0, 0, 0] for u in UNITS}
    count = dict.fromkeys(UNITS, 0)
    clock: list[list[int]] = [[0, 0, 0] for _ in body]
    pos = [0] * len(body)
    for index in order:
        insn = body[index]
        u = insn.unit
        vc = list(last[u])
        for ch in _channels_in(u):
            if getattr(insn, _pop_flag(ch)):
                k = popped.get(ch, 0)
                popped[ch] = k + 1
                vc = [max(a, b) for a, b in zip(vc, clock[pushes[ch][k]], strict=True)]
        count[u] += 1
        vc[_INDEX[u]] = pos[index] = count[u]
        clock[index] = last[u] = vc
        for ch in ((u, UPSTREAM[u]), (u, DOWNSTREAM[u])):
            if ch[1] is not None and getattr(insn, _push_flag(ch)):
                pushes.setdefault(ch, []).append(index)
    return clock, pos

"""The fast engine: the same cycle counts as ``sim.cycle``, computed per instruction, per DRAM
row and per DMA burst instead of per cycle.

Units are coroutines in a discrete-event simulation. Each one computes when its next step
happens from closed forms (``hw.dma``'s burst rule against ``sim.dram``'s timing, the units'
state sequences of ``hw.accel.TIMING``) and waits only where another unit decides:

- **tokens and queues**: a take happens in the first cycle in which the unit is idle, its queue
  head has arrived and its tokens have been pushed (each a cycle after the event);
- **the DMA read port**: fetch and LOAD ask for bursts; in the first cycle with room (fewer
  than ``dram.read_bursts`` in flight) the lowest port asking wins (LOAD); the DRAM answers
  the bursts in order, so a burst's beats follow those of the burst before it;
- **memory banks**: the compute unit is first on every bank port, so its instructions never
  wait for LOAD or STORE. Its activity in an instruction (which bank each port asks for, cycle
  by cycle) depends only on the instruction, so it is worked out once per distinct shape and
  reused; LOAD's row writes and STORE's row reads find their first free cycle in it.

Programs must pass ``check_program``; the result is a ``sim.cycle.Timing``.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass

from qaccel.isa import QUEUE_DEPTH, AccElement, Instruction, Opcode
from qaccel.program import Program, check_program
from sim import post_model
from sim.array_model import os_latency, ws_copy_cycles, ws_latency
from sim.cycle import (
    POPS,
    PUSHES,
    TIMED_COUNTERS,
    UNITS,
    InsnTiming,
    OperandStream,
    ResultRows,
    Timing,
    fetch_block,
    new_causes,
)
from sim.dram import DramTiming, split_bursts

__all__ = ["run_fast"]

POST_LATENCY = post_model.LATENCY
PORTS = ("sp_read", "sp_write", "acc_read", "acc_write")


def _f(insn: Instruction, name: str) -> int:
    return insn.fields.get(name, 0)


# --- the compute unit's activity in one instruction ----------------------------------------


@dataclass
class Activity:
    """What the compute unit does in one instruction, in cycles from its first active cycle
    (GEMM/LUT_GEMM: the first RUN cycle; POST: the first PARAMS cycle): the cycle it finishes,
    the last cycle the array took a beat (-1: none) and, per bank port, the runs of cycles in
    which it asks for each bank ({port: {bank: ([run starts], [run ends])}})."""

    finish: int
    last_take: int
    busy: dict
    accesses: dict  # {port: [accesses per bank]}
    fed: int = -1  # GEMM/LUT_GEMM: the first cycle with every operand row taken
    last_beat: int = -1  # GEMM/LUT_GEMM: the cycle its last result row leaves the block
    gap_until: int = -1  # output-stationary: a tile's last step waits through this cycle


def _runs(cycles_by_bank: dict[int, list[int]]) -> dict[int, tuple[list[int], list[int]]]:
    out = {}
    for bank, cycles in cycles_by_bank.items():
        starts, ends = [], []
        for c in sorted(set(cycles)):
            if ends and c == ends[-1] + 1:
                ends[-1] = c
            else:
                starts.append(c)
                ends.append(c)
        out[bank] = (starts, ends)
    return out


def _block_activity(g, sp_banks, acc_banks, insn: Instruction, gap: int = -1) -> Activity:
    """GEMM or LUT_GEMM from its first RUN cycle: streams, the block's stream contract and the
    result rows into the accumulator memory, stepped until the instruction finishes. The
    array starts with every tile of the instruction before retired; ``gap``: an output-
    stationary tile's last step waits through this cycle (the previous tile ended late)."""
    lut = insn.opcode == Opcode.LUT_GEMM
    m, k = _f(insn, "m"), _f(insn, "k")
    a0, w0, s0 = _f(insn, "a_addr"), _f(insn, "w_addr"), _f(insn, "scale_addr")
    rows, cols = g.rows, g.cols
    a, w, results = OperandStream(), OperandStream(), ResultRows()
    if lut:
        planes = g.lut_planes(_f(insn, "mode"))
        a.start(1, k, lambda t, p: a0 + p)
        w.start(1, k * planes, lambda t, p: w0 + p)
        results.start(_f(insn, "acc_addr"), 1, g.lut_tile_m, False, m)
        os = ws = False
    else:
        os = bool(_f(insn, "dataflow"))
        ws = not os
        mx = bool(g.array_modes[_f(insn, "mode")].block)
        nb = (k + 31) >> 5
        tiles = g.gemm_tiles(int(os), m, k)
        a_tile = m if ws else k
        a.start(tiles, a_tile, lambda t, p: a0 + t * a_tile + p, mx, lambda t, b: s0 + t * nb + b)
        w_scale = lambda t, b: s0 + tiles * nb + b  # noqa: E731
        if ws:
            w.start(tiles, rows, lambda t, p: w0 + t * rows + rows - 1 - p, mx, w_scale)
        else:
            w.start(tiles, k, lambda t, p: w0 + p, mx, w_scale)
        results.start(_f(insn, "acc_addr"), tiles, m if ws else rows, ws, m)
    sp_r, acc_r, acc_w = defaultdict(list), defaultdict(list), defaultdict(list)
    counts = {p: [0] * (sp_banks if p.startswith("sp") else acc_banks) for p in PORTS}
    sp_counts = counts["sp_read"]

    def count(address):
        sp_counts[address % sp_banks] += 1

    outs: list[int] = []  # cycles in which result rows leave the block
    out_i = 0
    wb = None  # (row, written) of the row written this cycle (read last cycle)
    last_take = -1
    # weight-stationary banks (hw.array): loading count, which bank loads and which computes
    ws_count, load_bank, use_bank = 0, 0, 0
    full = [False, False]
    pending, starting, copy_until = False, True, -1  # as sim.cycle's ws_pending, ...
    copy_now = ws_copy_cycles(rows) == 0
    gap_until = gap  # output-stationary: a tile's last step waits through this cycle
    lut_full, lut_plane, lut_last = False, 0, False
    fed = last_beat = -1
    t = 0
    while True:
        if fed < 0 and a.drained() and w.drained():
            fed = t
        # asks on the scratchpad read ports
        ra, rw = a.request(), w.request()
        bank_a = ra[0] % sp_banks if ra else None
        a_go = a_sc = w_go = w_sc = False
        if ra:
            sp_r[bank_a].append(t)
            a_go, a_sc = not ra[1], ra[1]
        if rw:
            bank_w = rw[0] % sp_banks
            sp_r[bank_w].append(t)
            if bank_w != bank_a:
                w_go, w_sc = not rw[1], rw[1]
        # the block takes its stream heads
        a_rdy, w_rdy = a.level > 0, w.level > 0
        if lut:
            last_plane = lut_plane == planes - 1
            w_take = w_rdy and lut_full
            a_take = a_rdy and (not lut_full or (w_take and last_plane))
        elif os:
            last = a.head_is_last()
            a_take = w_take = a_rdy and w_rdy and not (last and t <= gap_until)
        else:
            final = ws_count == rows - 1
            a_take = a_rdy and full[use_bank]
            free = not pending and t > copy_until
            if copy_now:  # the shadows free up as the tile's first beat enters
                free = free or (a_take and starting)
            w_take = w_rdy and (not final or free)
        # results
        out_now = out_i < len(outs) and outs[out_i] == t
        if out_now:
            acc_r[results.address() % acc_banks].append(t)
        if wb is not None and wb[1]:
            acc_w[wb[0] % acc_banks].append(t)
        if results.done() and wb is None:
            break
        # updates
        a.advance(a_go, a_sc, count)
        w.advance(w_go, w_sc, count)
        if lut:
            if w_take:
                if last_plane and lut_last:
                    outs.extend(t + 1 + r for r in range(g.lut_tile_m))
                lut_plane = 0 if last_plane else lut_plane + 1
            if a_take:
                lut_full, lut_last = True, a.head_is_last()
            elif w_take and last_plane:
                lut_full = False
        else:
            if a_take or w_take:
                last_take = t
            if os:
                if a_take and last:
                    gap_until = t + rows - 1
                    outs.extend(t + os_latency(rows, cols, r, g.pe_stages) for r in range(rows))
            else:
                if w_take:
                    if final:
                        ws_count = 0
                        full[load_bank] = True
                        load_bank ^= 1
                        pending = True
                    else:
                        ws_count += 1
                if a_take:
                    outs.append(t + ws_latency(rows, cols, g.pe_stages))
                    if starting:  # (a latch in this same cycle refills the shadows)
                        pending, copy_until = w_take and final, t + ws_copy_cycles(rows) - 1
                    starting = a.head_is_last()
                    if starting:
                        full[use_bank] = False
                        use_bank ^= 1
        if a_take:
            a.pop()
        if w_take:
            w.pop()
        wb = None
        if out_now:
            wb = results.beat()
            out_i += 1
            last_beat = t
        t += 1
    busy = {"sp_read": _runs(sp_r), "acc_read": _runs(acc_r), "acc_write": _runs(acc_w)}
    busy["sp_write"] = {}
    for port, per_bank in (("acc_read", acc_r), ("acc_write", acc_w)):
        for bank, cycles in per_bank.items():
            counts[port][bank] += len(cycles)
    return Activity(t, last_take, busy, counts, fed, last_beat, gap_until if os else -1)


def _post_activity(g, sp_banks, acc_banks, insn: Instruction) -> Activity:
    """POST from its first PARAMS cycle: three parameter rows (and a fourth read), then one
    accumulator (and residual) row per cycle, each written POST_LATENCY + 1 cycles later."""
    rows = _f(insn, "rows")
    p0, acc0 = _f(insn, "param_addr"), _f(insn, "acc_addr")
    out0, res0 = _f(insn, "out_addr"), _f(insn, "res_addr")
    run = 4  # the first RUN cycle
    acc_r = {}
    for s in range(4):
        acc_r.setdefault((p0 + s) % acc_banks, []).append(s)
    sp_r, sp_w = {}, {}
    for i in range(rows):
        acc_r.setdefault((acc0 + i) % acc_banks, []).append(run + i)
        if _f(insn, "residual"):
            sp_r.setdefault((res0 + i) % sp_banks, []).append(run + i)
        sp_w.setdefault((out0 + i) % sp_banks, []).append(run + i + 1 + POST_LATENCY)
    counts = {p: [0] * (sp_banks if p.startswith("sp") else acc_banks) for p in PORTS}
    for port, per_bank in (("acc_read", acc_r), ("sp_read", sp_r), ("sp_write", sp_w)):
        for bank, cycles in per_bank.items():
            counts[port][bank] += len(cycles)
    busy = {"sp_read": _runs(sp_r), "acc_read": _runs(acc_r), "sp_write": _runs(sp_w)}
    busy["acc_write"] = {}
    return Activity(run + rows + 1 + POST_LATENCY, -1, busy, counts)


# --- the discrete-event simulation ---------------------------------------------------------


class _Wait:
    """A coroutine waits for ``key`` to be announced."""

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key


class _Engine:
    def __init__(self, program: Program, check: bool):
        if check:
            check_program(program)
        self.program = program
        cfg = program.config
        self.g = g = program.geometry
        self.body = program.body
        self.delay = DramTiming.of(cfg).first_beat_delay  # AR to first beat, last W to B
        self.d = g.data_bytes
        self.sp_banks = cfg.memory.scratchpad_banks
        self.acc_banks = cfg.memory.accumulator_banks
        self.acc32 = g.acc_dram_row_bytes(AccElement.INT32)
        self.in_flight = 2 * g.rows + g.cols + 3 + g.pe_stages  # hw.array busy
        self.memo: dict = {}
        self.now = 0
        self.heap: list = []
        self.seq = 0
        self.waiting: dict = defaultdict(list)
        self.values: dict = {}
        # the queues: each unit's instructions in fetch order; push and take cycles
        self.queue_of = {u: [] for u in UNITS}
        self.pushed = {u: [] for u in UNITS}
        self.taken = {u: [] for u in UNITS}
        self.token_pushes = [[] for _ in range(4)]
        self.token_pops = [0, 0, 0, 0]
        self.records: list[InsnTiming] = []
        self.ends = {u: 0 for u in UNITS}
        self.halt_cycle = 0
        # the DMA read port: bursts numbered in grant order (epochs); ("read_idle", e) is
        # announced when the first cycle burst e may be granted in is known (the cycle after
        # burst e - 1's grant and after burst e - N's last beat), ("r_end", e) with that last beat
        self.read_bursts = cfg.dram.read_bursts
        self.read_epoch = 0
        self.values[("read_idle", 0)] = 1
        self.read_grants: dict[int, int] = {}
        self.read_asks: dict[int, int] = {}  # port -> cycle from which it asks for a burst
        # the compute unit's current instruction: (first active cycle, last cycle, Activity)
        self.compute_recent: list[tuple[int, int, Activity]] = []  # the last three
        self.compute_busy_until: int | None = None  # the current instruction's last cycle
        self.compute_idle = 1  # while it waits for an instruction: idle since
        self.flight_until = -1
        self.dataflow = 0
        self.stalls = {u: 0 for u in UNITS}
        self.causes = new_causes()
        self.sram = {
            "sp_read": [0] * self.sp_banks,
            "sp_write": [0] * self.sp_banks,
            "acc_read": [0] * self.acc_banks,
            "acc_write": [0] * self.acc_banks,
        }
        self.dram_read = self.dram_write = 0

    # --- the scheduler ----------------------------------------------------------------------

    def _at(self, t, co):
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, co))

    def _announce(self, key, value):
        self.values[key] = value
        for co in self.waiting.pop(key, ()):
            self._at(self.now, co)

    def _get(self, key):
        """(yield from) the value announced for ``key``."""
        while key not in self.values:
            yield _Wait(key)
        return self.values[key]

    def _until(self, t):
        """(yield from) resume in cycle ``t``: at once if it has come, or without a trip
        through the scheduler when no other coroutine acts before it."""
        if t > self.now:
            if self.heap and self.heap[0][0] <= t:
                yield t
            else:
                self.now = t

    def _compute_horizon(self) -> int | None:
        """The first cycle in which a compute instruction that is not known yet could ask
        for a bank port (None: no bound): its take comes after the current one's end, or,
        while the unit waits for an instruction, after the next event that could bring it;
        its first request comes two cycles after its take."""
        if self.compute_busy_until is not None:
            return self.compute_busy_until + 3
        if not self.heap:
            return None
        return max(self.compute_idle, self.heap[0][0] + 1) + 2

    def _grant(self, port, bank, c):
        """(yield from) the first cycle >= ``c`` in which the compute unit leaves ``bank`` of
        ``port`` free: found at once when it lies before the compute unit's horizon (only
        known instructions can ask before it), else in cycle ``c`` itself."""
        horizon = self._compute_horizon()
        if horizon is not None and c < horizon:
            free = self._free(port, bank, c)
            if free < horizon:
                return free
        yield from self._until(c)
        return self._free(port, bank, c)

    def _port_idle(self, port, lo, hi) -> bool:
        """True when no known compute instruction asks for any bank of ``port`` in cycles
        lo..hi."""
        for start, last, act in self.compute_recent:
            if last < lo or start > hi:
                continue
            for starts, ends in act.busy[port].values():
                i = bisect_right(starts, hi - start) - 1
                if i >= 0 and ends[i] >= lo - start:
                    return False
        return True

    def _count_rows(self, port, banks, first, n):
        """Count ``n`` accesses to rows first.. on ``port``."""
        per = self.sram[port]
        full, extra = divmod(n, banks)
        for b in range(banks):
            per[b] += full
        for i in range(extra):
            per[(first + i) % banks] += 1

    def run(self) -> Timing:
        for co in (self._fetch(), self._load(), self._store(), self._compute()):
            self._at(1, co)
        while self.heap:
            t, _, co = heapq.heappop(self.heap)
            self.now = max(self.now, t)
            try:
                what = co.send(None)
            except StopIteration:
                continue
            if isinstance(what, _Wait):
                self.waiting[what.key].append(co)
            else:
                self._at(what, co)
        # every unit ends waiting for an instruction that never comes; anything else is a bug
        stuck = [k for k in self.waiting if k[0] != "queued" or k[2] < len(self.pushed[k[1]])]
        if stuck:
            raise RuntimeError(f"the fast engine stalled waiting for {stuck}")
        end = max(self.halt_cycle, *self.ends.values()) + 1
        counters = dict.fromkeys(TIMED_COUNTERS, 0)
        counters["CYCLES"] = end
        reach = 0  # instructions overlap on the compute unit: count busy cycles once
        for rec in sorted(self.records, key=lambda r: r.take):
            if rec.unit != "compute":
                counters[f"{rec.unit.upper()}_BUSY"] += rec.end - rec.take
                continue
            counters["COMPUTE_BUSY"] += max(0, rec.end - max(rec.take, reach))
            reach = max(reach, rec.end)
        for u in UNITS:
            counters[f"{u.upper()}_STALL"] = self.stalls[u]
        records = sorted(self.records, key=lambda r: (r.take, UNITS.index(r.unit)))
        return Timing(counters, records, self.sram, self.dram_read, self.dram_write, self.causes)

    # --- queues and tokens ----------------------------------------------------------------

    def _take(self, unit, idle, idle_for=None):
        """(yield from) take the unit's next instruction in the first cycle >= ``idle`` in
        which its head is there and its tokens too; returns (index, take cycle).
        ``idle_for(opcode)``: the first cycle the unit can take that opcode, when it is not
        ``idle`` (the cycle from which the unit has nothing in flight)."""
        n = len(self.taken[unit])
        index = yield from self._get(("queued", unit, n))
        insn = self.body[index]
        head = self.pushed[unit][n] + 1
        if n:
            head = max(head, self.taken[unit][n - 1] + 1)
        ready = head
        for flag, ch in POPS[unit]:
            if getattr(insn, flag):
                k = self.token_pops[ch]
                self.token_pops[ch] += 1
                pushed = yield from self._get(("token", ch, k))
                ready = max(ready, pushed + 1)
        self.stalls[unit] += max(0, ready - head)
        # idle with an empty queue: the instruction had not been fetched yet
        self.causes[unit]["fetch"] += max(0, self.pushed[unit][n] + 1 - idle)
        take = max(ready, idle_for(insn.opcode) if idle_for else idle)
        self.taken[unit].append(take)
        self._announce(("taken", unit, n), take)
        return index, take

    def _finish(self, unit, index, take, end):
        insn = self.body[index]
        for flag, ch in PUSHES[unit]:
            if getattr(insn, flag):
                self._announce(("token", ch, len(self.token_pushes[ch])), end)
                self.token_pushes[ch].append(end)
        self.records.append(InsnTiming(index, unit, insn.opcode.name, take, end))
        self.ends[unit] = end

    # --- the DMA read port ------------------------------------------------------------------

    def _burst(self, port, ask):
        """(yield from) (epoch, cycle) of the burst ``port``, asking from cycle ``ask``, is
        granted: the first cycle with room in which it is the lowest port asking."""
        self.read_asks[port] = ask
        while True:
            epoch = self.read_epoch
            idle = yield from self._get(("read_idle", epoch))
            grant = max(idle, min(self.read_asks.values()))
            if self.now < grant:
                yield grant  # asks may still come for earlier cycles; look again then
                continue
            if epoch != self.read_epoch:
                continue  # another port took it
            winner = min(p for p, a in self.read_asks.items() if a <= self.now)
            if winner != port:
                yield from self._get(("read_idle", epoch + 1))
                continue
            del self.read_asks[port]
            self.read_grants[epoch] = self.now
            self.read_epoch += 1
            self._room(epoch + 1)
            return epoch, self.now

    def _room(self, e):
        """Announce the first cycle burst ``e`` may be granted in, once it is known."""
        grant = self.read_grants.get(e - 1)
        if grant is None:
            return
        idle = grant + 1
        if e >= self.read_bursts:
            end = self.values.get(("r_end", e - self.read_bursts))
            if end is None:
                return
            idle = max(idle, end + 1)
        del self.read_grants[e - 1]
        self._announce(("read_idle", e), idle)

    def _issuer(self, port, n, ask, key):
        """Ask for ``n`` bursts on ``port``, from cycle ``ask`` on, each from the cycle after
        the one before it was granted; announce (``key``, j) = (epoch, grant) of each."""
        for j in range(n):
            epoch, grant = yield from self._burst(port, ask)
            self._announce((key, j), (epoch, grant))
            ask = grant + 1

    def _bursts(self, port, bursts, ask, key):
        """Start asking for ``bursts`` (their issuer runs beside the unit, as the read engine
        requests while the unit receives)."""
        if bursts:
            self.read_asks[port] = ask
            self._at(self.now, self._issuer(port, len(bursts), ask, key))

    def _first_beat(self, epoch, grant):
        """(yield from) the cycle burst ``epoch``'s first beat comes in: L after its grant,
        and after the last beat of the burst before it."""
        first = grant + self.delay
        if epoch:
            before = yield from self._get(("r_end", epoch - 1))
            first = max(first, before + 1)
        return first

    def _release(self, epoch, last):
        """Burst ``epoch``'s last beat is taken in cycle ``last``."""
        self._announce(("r_end", epoch), last)
        self.values.pop(("r_end", epoch - self.read_bursts - 2), None)
        self._room(epoch + self.read_bursts)

    # --- memory banks -----------------------------------------------------------------------

    def _free(self, port, bank, c):
        """The first cycle >= ``c`` in which the compute unit does not ask for ``bank`` on
        ``port`` (a cycle that has come: its instruction is known). Instructions overlap
        (one's results come while the next is fed), so every recent one is asked."""
        moved = True
        while moved:
            moved = False
            for start, last, act in self.compute_recent:
                if not start <= c <= last:
                    continue
                runs = act.busy[port].get(bank)
                if not runs:
                    continue
                starts, ends = runs
                i = bisect_right(starts, c - start) - 1
                if i >= 0 and c - start <= ends[i]:
                    c = start + ends[i] + 1
                    moved = True
        return c

    # --- the units ------------------------------------------------------------------------

    def _fetch(self):
        g, d, program = self.g, self.d, self.program
        t = 1  # REQUEST
        pc = 0
        block = 0
        while True:
            addr, beats, count = fetch_block(g, program, pc)
            bursts = split_bursts(addr, beats, d)
            key = ("fetch", block)
            block += 1
            self._bursts(1, bursts, t + 1, key)
            last = None
            for j, (_, n) in enumerate(bursts):
                epoch, grant = yield from self._get((key, j))
                del self.values[(key, j)]
                last = (yield from self._first_beat(epoch, grant)) + n - 1
                self._release(epoch, last)
                self.dram_read += n * d
            decode = last + 2  # done the cycle after the last beat, DECODE the next
            for _ in range(count):
                insn = program.instructions[pc]
                if insn.opcode == Opcode.HALT:
                    self.halt_cycle = decode
                    return
                unit = insn.unit
                n = len(self.queue_of[unit])
                if n >= QUEUE_DEPTH:  # room once the entry four back has been taken
                    taken = yield from self._get(("taken", unit, n - QUEUE_DEPTH))
                    decode = max(decode, taken + 1)
                yield from self._until(decode)
                self.queue_of[unit].append(pc)
                self.pushed[unit].append(decode)
                self._announce(("queued", unit, n), pc)
                pc += 1
                decode += 1
            t = decode  # REQUEST the cycle after the block's last word

    def _row_beats(self, insn):
        if not insn.mem:
            return self.g.sp_row_bytes // self.d
        return (self.acc32 if insn.elem else self.g.acc_row_bytes) // self.d

    def _load(self):
        d = self.d
        idle = 1
        while True:
            index, take = yield from self._take("load", idle)
            insn = self.body[index]
            rb = self._row_beats(insn)
            port = "acc_write" if insn.mem else "sp_write"
            banks = self.acc_banks if insn.mem else self.sp_banks
            row = insn.sram_addr
            beat = 0  # of the memory row being received
            pending = None  # a received row's first write cycle
            written = 0  # the last row write's cycle
            issue = take + 2  # one command for every row, accepted in ISSUE
            bursts = [
                burst
                for y in range(insn.y_size)
                for burst in split_bursts(
                    insn.dram_addr + y * insn.dram_stride, insn.x_size * rb, d
                )
            ]
            key = ("load", index)
            self._bursts(0, bursts, issue + 1, key)
            for j, (_, n) in enumerate(bursts):
                epoch, grant = yield from self._get((key, j))
                del self.values[(key, j)]
                first = yield from self._first_beat(epoch, grant)
                avail = max(first, written)  # the burst's first beat
                left = n
                while left:
                    if pending is not None:
                        written = yield from self._grant(port, row % banks, pending)
                        self.causes["load"]["bank"] += written - pending
                        self.sram[port][row % banks] += 1
                        row += 1
                        avail = max(avail, written)
                        pending = None
                    # whole rows at once while nothing can claim their banks
                    rows_now = left // rb - 1 if beat == 0 and pending is None else 0
                    horizon = self._compute_horizon()
                    if horizon is not None:  # row i is written in cycle avail + (i+1) rb
                        rows_now = min(rows_now, (horizon - 1 - avail) // rb)
                    if rows_now > 0:
                        lo, hi = avail + rb, avail + rows_now * rb
                        if self._port_idle(port, lo, hi):
                            self._count_rows(port, banks, row, rows_now)
                            row += rows_now
                            left -= rows_now * rb
                            avail += rows_now * rb
                    take_n = min(left, rb - beat)
                    last = avail + take_n - 1
                    left -= take_n
                    beat += take_n
                    avail = last + 1
                    if beat == rb:
                        beat, pending = 0, last + 1
                self._release(epoch, last)
                self.dram_read += n * d
            issue = last + 2  # done, then FINISH
            # the last row's write
            written = yield from self._grant(port, row % banks, pending)
            self.causes["load"]["bank"] += written - pending
            self.sram[port][row % banks] += 1
            row += 1
            pending = None
            end = max(issue, written)  # FINISH: until the last row is written
            yield from self._until(end)
            self._finish("load", index, take, end)
            idle = end + 1

    def _store(self):
        d, delay = self.d, self.delay
        idle = 1
        while True:
            index, take = yield from self._take("store", idle)
            insn = self.body[index]
            rb = self._row_beats(insn)
            port = "acc_read" if insn.mem else "sp_read"
            banks = self.acc_banks if insn.mem else self.sp_banks
            row = insn.sram_addr
            issue = take + 2
            for y in range(insn.y_size):
                bursts = split_bursts(insn.dram_addr + y * insn.dram_stride, insn.x_size * rb, d)
                starts, k = [], 0  # the beat each later burst starts with
                for _, n in bursts:
                    starts.append(k)
                    k += n
                starts = [*starts[1:], k]
                nxt = 0  # the next burst start ahead
                engine = issue + 2  # the first burst's AW the cycle after the command
                ask = issue + 1  # READ
                j = 0  # beat of the command
                last = None
                for _ in range(insn.x_size):
                    granted = yield from self._grant(port, row % banks, ask)
                    self.causes["store"]["bank"] += granted - ask
                    self.sram[port][row % banks] += 1
                    row += 1
                    c = granted + 2  # LATCH, then SEND
                    end_j = j + rb
                    while j < end_j:  # beats run back to back up to the next burst's start
                        if j == starts[nxt]:
                            engine = last + 2  # ADDR (AW) after the burst's last beat
                            nxt += 1
                        c = max(c, engine)
                        run = min(end_j, starts[nxt]) - j
                        last = c + run - 1
                        c = last + 1
                        j += run
                    ask = last + 1
                self.dram_write += insn.x_size * rb * d
                issue = last + delay + 2  # B, then done, then ISSUE or FINISH
            end = issue
            yield from self._until(end)
            self._finish("store", index, take, end)
            idle = end + 1

    def _compute(self):
        """The compute unit (hw.accel): a GEMM may be taken once the array has taken every
        row of the one before (its results still coming) and a result slot is free; anything
        else waits until nothing is in flight."""
        idle = 1  # nothing in flight from this cycle
        gemm_from = 1  # a GEMM may be taken from this cycle
        slot_last_beat = -1  # the last result row of the instruction in the first slot
        gap_until = -1  # output-stationary: the last tile's gap, absolute
        while True:
            self.compute_busy_until, self.compute_idle = None, gemm_from
            index, take = yield from self._take(
                "compute", idle, lambda op, g=gemm_from, i=idle: g if op == Opcode.GEMM else i
            )
            insn = self.body[index]
            if insn.opcode == Opcode.POST:
                start = take + 2
            elif insn.opcode == Opcode.LUT_GEMM:
                start = take + 3
            else:
                setup = take + 2
                df = _f(insn, "dataflow")
                busy = setup <= self.flight_until
                if df != self.dataflow and busy:
                    setup = self.flight_until + 1
                self.dataflow = df
                start = setup + 1
            gap = -1
            if insn.opcode == Opcode.GEMM and _f(insn, "dataflow") and gap_until >= start:
                gap = gap_until - start
            act = self._activity(insn, gap)
            end = start + act.finish
            if act.last_take >= 0:
                self.flight_until = start + act.last_take + self.in_flight
            if act.gap_until >= 0:
                gap_until = start + act.gap_until
            self.compute_recent = [*self.compute_recent[-2:], (start, end, act)]
            for port, counts in act.accesses.items():
                for bank, n in enumerate(counts):
                    self.sram[port][bank] += n
            if insn.opcode == Opcode.POST:
                gemm_from, slot_last_beat = end + 1, -1
            else:
                fed = start + act.fed + 1  # the state machine is idle from here
                last_beat = start + act.last_beat
                if insn.opcode == Opcode.LUT_GEMM:  # a GEMM waits for its last row
                    gemm_from = max(fed, last_beat + 1)
                elif slot_last_beat > setup:  # the second slot: free with the first's last row
                    gemm_from = max(fed, slot_last_beat + 1)
                else:
                    gemm_from = fed
                slot_last_beat = last_beat
            idle = end + 1
            self.compute_busy_until = gemm_from - 1
            self._finish("compute", index, take, end)
            yield from self._until(gemm_from)

    def _activity(self, insn: Instruction, gap: int = -1) -> Activity:
        sp, acc = self.sp_banks, self.acc_banks
        if insn.opcode == Opcode.POST:
            key = (
                "post",
                _f(insn, "rows"),
                _f(insn, "residual"),
                _f(insn, "param_addr") % acc,
                _f(insn, "acc_addr") % acc,
                _f(insn, "out_addr") % sp,
                _f(insn, "res_addr") % sp,
            )
        else:
            key = (
                insn.opcode,
                _f(insn, "dataflow"),
                _f(insn, "mode"),
                _f(insn, "m"),
                _f(insn, "k"),
                _f(insn, "a_addr") % sp,
                _f(insn, "w_addr") % sp,
                _f(insn, "scale_addr") % sp,
                _f(insn, "acc_addr") % acc,
                gap,
            )
        act = self.memo.get(key)
        if act is None:
            if insn.opcode == Opcode.POST:
                act = _post_activity(self.g, sp, acc, insn)
            else:
                act = _block_activity(self.g, sp, acc, insn, gap)
            self.memo[key] = act
        return act


def run_fast(program: Program, *, check: bool = True) -> Timing:
    """``program``'s timing (``sim.cycle.Timing``), the same as ``sim.cycle.run_cycles``'s.
    ``check=False`` skips ``check_program`` for a program its builder has just checked."""
    return _Engine(program, check).run()

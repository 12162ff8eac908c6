"""The cycle engine: the accelerator's microarchitecture stepped one clock cycle at a time.

It is the readable specification of the timing that ``hw.accel`` builds (its ``TIMING`` rules,
``hw.dma``'s engines, ``hw.banked``'s port priority, the array's and the LUT core's stream
contracts, ``hw.post``'s latency) against the DRAM of ``sim.dram``, and it predicts the RTL's
cycle and per-unit counters exactly. Each cycle is evaluated in two halves, as the hardware
is: first every combinational decision from the registered state (in the order the signals
depend on each other), then every register update.

Data is not modelled here: ``sim.executor`` computes the results (the checker guarantees that
every valid program's results do not depend on timing). Programs must pass ``check_program``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from qaccel import csr
from qaccel.isa import FETCH_WORDS, QUEUE_DEPTH, STREAM_DEPTH, AccElement, Instruction, Opcode
from qaccel.program import Program, check_program
from sim import post_model
from sim.array_model import os_latency, ws_copy_cycles, ws_latency
from sim.dram import DramTiming, split_bursts

__all__ = [
    "TIMED_COUNTERS",
    "InsnTiming",
    "OperandStream",
    "ResultRows",
    "Timing",
    "fetch_block",
    "new_causes",
    "run_cycles",
]

# the counters (qaccel.csr) whose values depend on timing; the others are sim.executor's
TIMED_COUNTERS = tuple(
    c.name for c in csr.COUNTERS if c.name == "CYCLES" or c.name.endswith(("_BUSY", "_STALL"))
)
UNITS = ("load", "compute", "store")
LC, CL, CS, SC = range(4)  # token channels: (producer, consumer)
POPS = {"load": (("pop_next", CL),), "compute": (("pop_prev", LC), ("pop_next", SC))}
POPS["store"] = (("pop_prev", CS),)
PUSHES = {"load": (("push_next", LC),), "compute": (("push_prev", CL), ("push_next", CS))}
PUSHES["store"] = (("push_prev", SC),)
FIFO_DEPTH = STREAM_DEPTH
POST_LATENCY = post_model.LATENCY  # hw.post: a row accepted in cycle t leaves t + LATENCY
MX_BLOCK_ROWS = 32


@dataclass
class InsnTiming:
    """When one instruction ran: taken from its queue, and finished (its last cycle)."""

    index: int
    unit: str
    opcode: str
    take: int
    end: int = -1


@dataclass
class Timing:
    """A run's timing: the timed counters, each instruction's cycles and the memory traffic."""

    counters: dict[str, int]
    insns: list[InsnTiming]
    sram: dict[str, list[int]] = field(default_factory=dict)  # accesses per bank
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    # cycles lost per unit and cause besides tokens: "fetch" (idle, its next instruction not
    # fetched yet) and "bank" (LOAD/STORE waiting for a bank port the compute unit holds)
    causes: dict[str, dict[str, int]] = field(default_factory=dict)


def new_causes() -> dict[str, dict[str, int]]:
    return {unit: {"fetch": 0, "bank": 0} for unit in UNITS}


def fetch_block(g, program: Program, pc: int) -> tuple[int, int, int]:
    """Fetch's DMA read for the block of words from ``pc``: (byte address, beats, words)."""
    count = min(FETCH_WORDS, len(program.instructions) - pc)
    addr = program.prog_addr + pc * g.insn_bytes
    d, ib = g.data_bytes, g.insn_bytes
    if ib >= d:
        return addr, count * (ib // d), count
    lanes = d // ib
    first = (addr % d) // ib  # a narrow word may start mid-beat
    return addr, (first + count + lanes - 1) // lanes, count


def _f(insn: Instruction, name: str) -> int:
    return insn.fields.get(name, 0)


class OperandStream:
    """An operand stream (hw.accel ``_row_stream``): ``tiles`` tiles of ``tile`` rows, row p of
    tile t at ``addr(t, p)``, read into a FIFO of ``FIFO_DEPTH`` rows (rows in flight counted).
    MX streams read the scale row ``scale_addr(t, b)`` before the first row of each 32-row
    block b of a tile."""

    def __init__(self):
        self.level = 0
        self.pending = False  # a row read last cycle enters the FIFO this cycle
        self.start(0, 1, lambda t, p: 0)

    def start(self, tiles, tile, addr, mx=False, scale_addr=None):
        self.tiles, self.tile, self.addr, self.mx = tiles, tile, addr, mx
        self.scale_addr = scale_addr or (lambda t, b: 0)
        self.tile_index = self.pos = self.popped = 0
        self.have = 0  # MX: block + 1 of the tile whose scale row was read

    def request(self):
        """(row address asked for, is it a scale row) this cycle, or None."""
        if self.tile_index >= self.tiles:
            return None
        block = self.pos >> 5
        if self.mx and self.have != block + 1:
            return self.scale_addr(self.tile_index, block), True
        if self.level + self.pending < FIFO_DEPTH:
            return self.addr(self.tile_index, self.pos), False
        return None

    def advance(self, go: bool, scale: bool, count) -> None:
        """The register update: a granted row read (``go``) or scale read; ``count(address)``
        counts each read."""
        if scale:
            count(self.scale_addr(self.tile_index, self.pos >> 5))
            self.have = (self.pos >> 5) + 1
        if self.pending:
            self.level += 1
        self.pending = go
        if go:
            count(self.addr(self.tile_index, self.pos))
            if self.pos == self.tile - 1:
                self.pos = self.have = 0
                self.tile_index += 1
            else:
                self.pos += 1

    def drained(self) -> bool:
        """Every row read and taken from the FIFO."""
        return self.tile_index >= self.tiles and not self.pending and self.level == 0

    def head_is_last(self) -> bool:
        """The FIFO head is the last row of its tile."""
        return self.popped % self.tile == self.tile - 1

    def pop(self) -> None:
        self.level -= 1
        self.popped += 1


class ResultRows:
    """Where a GEMM's or LUT_GEMM's result beats go (hw.accel): ``tiles`` tiles of
    ``tile_len`` beats; with ``same_rows`` (weight-stationary) every tile to rows base + beat,
    adding after the first, else consecutive rows, kept below ``keep`` rows."""

    def start(self, base, tiles, tile_len, same_rows, keep):
        self.base, self.tiles, self.tile_len = base, tiles, tile_len
        self.same_rows, self.keep = same_rows, keep
        self.pos = self.row = self.done_tiles = 0

    def address(self) -> int:
        """The accumulator row of the next beat."""
        return self.base + (self.pos if self.same_rows else self.row)

    def beat(self) -> tuple[int, bool]:
        """The next beat: (its row, whether it is written)."""
        out = self.address(), self.same_rows or self.row < self.keep
        self.row += 1
        if self.pos == self.tile_len - 1:
            self.pos = 0
            self.done_tiles += 1
        else:
            self.pos += 1
        return out

    def done(self) -> bool:
        return self.done_tiles == self.tiles

    def next_is_last(self) -> bool:
        """The next beat is the instruction's last."""
        return self.pos == self.tile_len - 1 and self.done_tiles == self.tiles - 1


class _Machine:
    def __init__(self, program: Program):
        check_program(program)
        self.program = program
        cfg = program.config
        self.g = g = program.geometry
        self.dram = DramTiming.of(cfg)
        self.body = program.body
        self.sp_banks = cfg.memory.scratchpad_banks
        self.acc_banks = cfg.memory.accumulator_banks
        d = g.data_bytes
        self.d = d
        self.acc32 = g.acc_dram_row_bytes(AccElement.INT32)
        self.t = 0
        self.counters = dict.fromkeys(TIMED_COUNTERS, 0)
        self.insns: list[InsnTiming] = []
        self.sram = {
            "sp_read": [0] * self.sp_banks,
            "sp_write": [0] * self.sp_banks,
            "acc_read": [0] * self.acc_banks,
            "acc_write": [0] * self.acc_banks,
        }
        self.dram_read_bytes = self.dram_write_bytes = 0
        self.tokens = [0, 0, 0, 0]
        self.queues = {u: deque() for u in UNITS}
        self.causes = new_causes()
        self.total = {u: sum(i.unit == u for i in self.body) for u in UNITS}
        self.pushed = dict.fromkeys(UNITS, 0)
        self.record: dict[int, InsnTiming] = {}
        # fetch
        self.f_state, self.pc, self.halted = "REQUEST", 0, False
        self.f_count = self.f_index = 0  # the block's words, and the next one to decode
        # DMA read engine: port 0 LOAD, port 1 fetch
        self.rp_busy = [False, False]
        self.rp_left = [0, 0]  # beats of the current row not yet requested
        self.rp_addr = [0, 0]
        self.rp_row = [0, 0]  # the current row's address, for a strided command
        self.rp_rows = [(0, 0), (0, 0)]  # (rows after the current one, stride)
        self.rp_beats = [0, 0]  # per row
        self.rp_done = [False, False]
        self.read_bursts = cfg.dram.read_bursts
        # bursts in flight, oldest first: [beats left, cycle the next may go, port, last]
        self.r_bursts: deque[list] = deque()
        # DMA write engine
        self.wp_busy, self.wp_left, self.wp_addr, self.wp_out = False, 0, 0, 0
        self.we_data, self.we_burst_left = False, 0
        self.b_times: deque[int] = deque()
        # load unit
        self.l_state, self.l_insn = "IDLE", None
        self.l_row = self.l_beat = 0
        self.l_pending = False
        # store unit
        self.s_state, self.s_insn = "IDLE", None
        self.s_y = self.s_x = self.s_row = self.s_addr = self.s_beat = 0
        # compute unit
        self.c_state, self.c_insn = "IDLE", None
        self.a, self.w = OperandStream(), OperandStream()
        self.outs: deque[int] = deque()  # cycles in which a result row leaves the block
        # result slots (hw.accel): each (ResultRows, its InsnTiming, from the array)
        self.res_cur = self.res_nxt = None
        self.opening = None  # a slot opened this cycle: ("cur" | "nxt", slot)
        self.wb = None  # (row, written, InsnTiming when it is its instruction's last)
        self.fin = None  # the InsnTiming of the instruction that ends this cycle
        self.dataflow_reg = 0
        self.flight_until = -1  # the array is busy (in flight) through this cycle
        self.ws_count, self.ws_load_bank, self.ws_use_bank = 0, 0, 0
        self.ws_full = [False, False]
        # hw.array: the PEs' shadow weights hold a tile that has not started; the next a beat
        # starts a tile; the last w beat of a tile waits through this cycle (copies under way)
        self.ws_pending, self.ws_starting, self.ws_copy_until = False, True, -1
        self.os_gap_until = -1
        self.lut_full, self.lut_plane, self.lut_last = False, 0, False
        self.lut_pending_until = -1
        self.param_step = self.post_in = self.post_out = 0
        self.post_writes: deque[int] = deque()  # cycles of POST's scratchpad writes

    # --- helpers --------------------------------------------------------------------------

    def _row_beats(self, insn):
        g = self.g
        if not insn.mem:
            return g.sp_row_bytes // self.d
        return (self.acc32 if insn.elem else g.acc_row_bytes) // self.d

    def _can_start(self, unit):
        q = self.queues[unit]
        if not q:
            return False, False
        insn = self.body[q[0]]
        ok = all(not getattr(insn, flag) or self.tokens[ch] for flag, ch in POPS[unit])
        return ok, not ok

    # --- one cycle ------------------------------------------------------------------------

    def step(self) -> bool:
        """Advance one cycle; True when this was the run's last cycle."""
        t = self.t = self.t + 1
        g, d = self.g, self.d
        take = {}
        for unit in UNITS:
            ok, stall = self._can_start(unit)
            take[unit] = ok
            if stall:
                self.counters[f"{unit.upper()}_STALL"] += 1
        dec, inc = [0, 0, 0, 0], [0, 0, 0, 0]

        # --- the compute unit (first in every priority: it never waits for the others) ----
        in_flight = bool(self.res_cur or self.res_nxt or self.wb or self.fin)
        c_busy = self.c_state != "IDLE" or in_flight
        if take["compute"]:  # a GEMM after a GEMM needs a free slot, anything else none in flight
            head = self.body[self.queues["compute"][0]]
            gemm_head = head.opcode == Opcode.GEMM
            free = self.res_nxt is None and (self.res_cur is None or self.res_cur[2])
            take["compute"] = free if gemm_head else not in_flight
        sp_read_banks: set[int] = set()  # scratchpad read ports the compute unit asks for
        acc_read_bank = acc_write_bank = sp_write_bank = None
        c_finish, c_next = False, self.c_state
        a_go = w_go = False
        a_scale = w_scale = False
        a_take = w_take = False
        out_now = bool(self.outs) and self.outs[0] == t
        st = self.c_state
        insn = self.c_insn
        if st == "IDLE":
            if take["compute"]:
                c_next = "CHECK"
        elif st == "CHECK":
            c_next = {
                Opcode.GEMM: "GEMM_SETUP",
                Opcode.LUT_GEMM: "LUT_SETUP",
                Opcode.POST: "POST_PARAMS",
            }[insn.opcode]
        elif st == "GEMM_SETUP":
            busy = t <= self.flight_until or any(self.ws_full) or self.ws_count != 0
            if self.dataflow_reg == _f(insn, "dataflow") or not busy:
                c_next = "GEMM_RUN"
        elif st == "LUT_SETUP":
            c_next = "LUT_RUN"
        elif st == "POST_PARAMS":
            acc_read_bank = (_f(insn, "param_addr") + self.param_step) % self.acc_banks
            if self.param_step == 3:
                c_next = "POST_RUN"
        elif st == "POST_RUN":
            rows = _f(insn, "rows")
            if self.post_in != rows:
                acc_read_bank = (_f(insn, "acc_addr") + self.post_in) % self.acc_banks
                if _f(insn, "residual"):
                    bank = (_f(insn, "res_addr") + self.post_in) % self.sp_banks
                    sp_read_banks.add(bank)
                    self.sram["sp_read"][bank] += 1
            if self.post_out == rows:
                c_finish, c_next = True, "IDLE"
        if st in ("GEMM_RUN", "LUT_RUN"):
            # operand streams: activations first on a shared bank
            ra, rw = self.a.request(), self.w.request()
            bank_a = ra[0] % self.sp_banks if ra else None
            if ra:
                sp_read_banks.add(bank_a)
                a_go, a_scale = not ra[1], ra[1]
            if rw:
                bank_w = rw[0] % self.sp_banks
                sp_read_banks.add(bank_w)
                if bank_w != bank_a:
                    w_go, w_scale = not rw[1], rw[1]
            if st == "GEMM_RUN":
                a_take, w_take = self._array_takes(t, insn)
            else:
                a_take, w_take = self._lut_takes(t, insn)
            if self.a.drained() and self.w.drained():
                c_next = "IDLE"  # fed: the results may still come
        if out_now:
            acc_read_bank = self.res_cur[0].address() % self.acc_banks
        if self.wb is not None and self.wb[1]:
            acc_write_bank = self.wb[0] % self.acc_banks
        c_ended = self.fin  # a GEMM or LUT_GEMM ends with its results
        if c_finish:
            c_ended = self.record["compute"]
        if self.post_writes and self.post_writes[0] == t:
            sp_write_bank = (_f(insn, "out_addr") + self.post_out) % self.sp_banks

        # --- the store unit's memory read (after the compute unit on every port) ----------
        s_next = self.s_state
        s_insn = self.s_insn
        s_busy = self.s_state != "IDLE"
        s_read_granted = False
        if self.s_state == "READ":
            if s_insn.mem:
                bank = self.s_row % self.acc_banks
                s_read_granted = bank != acc_read_bank
                if s_read_granted:
                    self.sram["acc_read"][bank] += 1
            else:
                bank = self.s_row % self.sp_banks
                s_read_granted = bank not in sp_read_banks
                if s_read_granted:
                    self.sram["sp_read"][bank] += 1

        # --- the load unit's memory write (after the compute unit) --------------------------
        l_insn = self.l_insn
        l_written = False
        if self.l_pending:
            if l_insn.mem:
                bank = self.l_row % self.acc_banks
                l_written = bank != acc_write_bank
                if l_written:
                    self.sram["acc_write"][bank] += 1
            else:
                bank = self.l_row % self.sp_banks
                l_written = bank != sp_write_bank
                if l_written:
                    self.sram["sp_write"][bank] += 1
        l_ready = self.l_state == "RECEIVE" and (not self.l_pending or l_written)

        # --- the DMA read engine and the DRAM's read side -----------------------------------
        r_beat = False
        r_owner = None
        rp_done_next = [False, False]
        ar = None
        if self.r_bursts:
            head = self.r_bursts[0]
            r_owner = head[2]
            if head[1] <= t:
                ready = l_ready if r_owner == 0 else self.f_state == "RECEIVE"
                if ready:
                    r_beat = True
                    if head[0] == 1 and head[3]:
                        rp_done_next[r_owner] = True
        if len(self.r_bursts) < self.read_bursts:
            for i in (0, 1):
                if self.rp_busy[i] and self.rp_left[i]:
                    ar = i
                    break

        # --- the load unit ------------------------------------------------------------------
        l_next = self.l_state
        l_cmd = False
        l_finish = False
        if self.l_state == "IDLE":
            if take["load"]:
                l_next = "CHECK"
        elif self.l_state == "CHECK":
            l_next = "ISSUE"
        elif self.l_state == "ISSUE":
            if not self.rp_busy[0]:
                l_cmd, l_next = True, "RECEIVE"
        elif self.l_state == "RECEIVE":
            if self.rp_done[0]:
                l_next = "FINISH"
        elif self.l_state == "FINISH" and (not self.l_pending or l_written):
            l_finish, l_next = True, "IDLE"
        l_busy = self.l_state != "IDLE"

        # --- the DMA write engine and the DRAM's write side --------------------------------
        w_finished = not self.we_data and self.wp_busy and self.wp_left == 0 and self.wp_out == 0
        s_send = self.s_state == "SEND"
        w_beat = self.we_data and s_send
        aw = (not self.we_data) and self.wp_busy and self.wp_left != 0
        b_take = bool(self.b_times) and self.b_times[0] == t

        # --- the store unit -----------------------------------------------------------------
        s_cmd = False
        s_finish = False
        if self.s_state == "IDLE":
            if take["store"]:
                s_next = "CHECK"
        elif self.s_state == "CHECK":
            s_next = "ISSUE"
        elif self.s_state == "ISSUE":
            if not self.wp_busy or w_finished:
                s_cmd, s_next = True, "READ"
        elif self.s_state == "READ":
            if s_read_granted:
                s_next = "LATCH"
        elif self.s_state == "LATCH":
            s_next = "SEND"
        elif self.s_state == "SEND":
            if w_beat and self.s_beat == self._row_beats(s_insn) - 1:
                s_next = "WAIT" if self.s_x + 1 == s_insn.x_size else "READ"
        elif self.s_state == "WAIT":
            if w_finished:
                s_next = "FINISH" if self.s_y + 1 == s_insn.y_size else "ISSUE"
        elif self.s_state == "FINISH":
            s_finish, s_next = True, "IDLE"

        # --- fetch --------------------------------------------------------------------------
        f_next = self.f_state
        f_cmd = False
        f_push = None
        if self.f_state == "REQUEST":
            if not self.rp_busy[1]:
                f_cmd, f_next = True, "RECEIVE"
        elif self.f_state == "RECEIVE":
            if self.rp_done[1]:
                f_next = "DECODE"
        elif self.f_state == "DECODE":
            insn = self.program.instructions[self.pc]
            if insn.opcode == Opcode.HALT:
                f_next = "IDLE"
            else:
                unit = insn.unit
                if len(self.queues[unit]) < QUEUE_DEPTH:
                    f_push = unit
                    if self.f_index + 1 == self.f_count:
                        f_next = "REQUEST"

        # --- tokens, counters, the end --------------------------------------------------------
        for unit, finishing, ins in (
            ("load", l_finish, self.l_insn),
            ("compute", c_ended is not None, c_ended and self.body[c_ended.index]),
            ("store", s_finish, self.s_insn),
        ):
            if (
                take[unit]
                and {"load": self.l_state, "compute": st, "store": self.s_state}[unit] == "IDLE"
            ):
                head = self.body[self.queues[unit][0]]
                for flag, ch in POPS[unit]:
                    dec[ch] += getattr(head, flag)
            if finishing:
                for flag, ch in PUSHES[unit]:
                    inc[ch] += getattr(ins, flag)
        c_idle = "BUSY" if in_flight else st  # idle: nothing in flight either
        for unit, state in (("load", self.l_state), ("compute", c_idle), ("store", self.s_state)):
            if state == "IDLE" and not self.queues[unit] and self.pushed[unit] < self.total[unit]:
                self.causes[unit]["fetch"] += 1
        if self.l_pending and not l_written:
            self.causes["load"]["bank"] += 1
        if self.s_state == "READ" and not s_read_granted:
            self.causes["store"]["bank"] += 1
        self.counters["CYCLES"] += 1
        self.counters["LOAD_BUSY"] += l_busy
        self.counters["COMPUTE_BUSY"] += c_busy
        self.counters["STORE_BUSY"] += s_busy
        ending = (
            not l_busy
            and not c_busy
            and not s_busy
            and not any(self.queues.values())
            and self.halted
            and self.f_state == "IDLE"
        )

        # ===================== register updates ============================================
        for ch in range(4):
            self.tokens[ch] += inc[ch] - dec[ch]

        # DMA read engine
        if ar is not None:
            addr, left = self.rp_addr[ar], self.rp_left[ar]
            (_, length), *_ = split_bursts(addr, left, d)
            more, stride = self.rp_rows[ar]
            if length == left and more:  # on to the next row
                self.rp_row[ar] += stride
                self.rp_addr[ar], self.rp_left[ar] = self.rp_row[ar], self.rp_beats[ar]
                self.rp_rows[ar] = (more - 1, stride)
            else:
                self.rp_addr[ar] = addr + length * d
                self.rp_left[ar] = left - length
            last = length == left and not more
            self.r_bursts.append([length, t + self.dram.first_beat_delay, ar, last])
        if r_beat:
            head = self.r_bursts[0]
            head[0] -= 1
            if head[0] == 0:
                self.r_bursts.popleft()
                if self.r_bursts:
                    self.r_bursts[0][1] = max(self.r_bursts[0][1], t + 1)
            else:
                head[1] = t + 1
            self.dram_read_bytes += d
        for i in (0, 1):
            if rp_done_next[i]:
                self.rp_busy[i] = False
        self.rp_done = rp_done_next

        # fetch
        if f_cmd:
            addr, beats, self.f_count = fetch_block(g, self.program, self.pc)
            self._read_cmd(1, addr, beats)
            self.f_index = 0
        if f_next == "IDLE" and self.f_state == "DECODE":
            self.halted = True
        if f_push:
            self.pushed[f_push] += 1
            self.queues[f_push].append(self.pc)
            self.pc += 1
            self.f_index += 1
        self.f_state = f_next

        # load unit
        if self.l_state == "IDLE" and take["load"]:
            self.l_insn = self._take("load", t)
        elif self.l_state == "CHECK":
            self.l_row = l_insn.sram_addr
        if l_cmd:
            beats = l_insn.x_size * self._row_beats(l_insn)
            self._read_cmd(0, l_insn.dram_addr, beats, l_insn.y_size - 1, l_insn.dram_stride)
            self.l_beat = 0
        if l_written:
            self.l_row += 1
            self.l_pending = False
        if r_beat and r_owner == 0:
            if self.l_beat == self._row_beats(l_insn) - 1:
                self.l_beat, self.l_pending = 0, True
            else:
                self.l_beat += 1
        if l_finish:
            self._finish("load", t)
        self.l_state = l_next

        # DMA write engine and the store unit
        if b_take:
            self.b_times.popleft()
        self.wp_out += int(aw) - int(b_take)
        if w_finished:
            self.wp_busy = False
        if s_cmd:
            self.wp_busy = True
            self.wp_addr = self.s_addr
            self.wp_left = s_insn.x_size * self._row_beats(s_insn)
            self.s_addr += s_insn.dram_stride
            self.s_x = 0
        if aw:
            (_, length), *_ = split_bursts(self.wp_addr, self.wp_left, d)
            self.wp_addr += length * d
            self.wp_left -= length
            self.we_burst_left = length
            self.we_data = True
        elif w_beat:
            self.dram_write_bytes += d
            self.we_burst_left -= 1
            if self.we_burst_left == 0:
                self.we_data = False
                self.b_times.append(t + self.dram.response_delay)
        if self.s_state == "IDLE" and take["store"]:
            self.s_insn = self._take("store", t)
        elif self.s_state == "CHECK":
            self.s_y, self.s_row, self.s_addr = 0, s_insn.sram_addr, s_insn.dram_addr
        elif self.s_state == "LATCH":
            self.s_beat = 0
            self.s_row += 1
        elif self.s_state == "SEND" and w_beat:
            self.s_beat += 1
            if self.s_beat == self._row_beats(s_insn):
                self.s_x += 1
        elif self.s_state == "WAIT" and w_finished:
            self.s_y += 1
        if s_finish:
            self._finish("store", t)
        self.s_state = s_next

        # compute unit
        self._compute_update(t, st, c_next, take["compute"], a_go, w_go, a_scale, w_scale)
        self._compute_results(t, out_now, a_take, w_take)
        if sp_write_bank is not None:
            self.sram["sp_write"][sp_write_bank] += 1
            self.post_writes.popleft()
            self.post_out += 1
        if acc_write_bank is not None:
            self.sram["acc_write"][acc_write_bank] += 1
        if acc_read_bank is not None:
            self.sram["acc_read"][acc_read_bank] += 1
        if c_ended is not None:
            c_ended.end = t
        return ending

    # --- pieces of the update ----------------------------------------------------------------

    def _take(self, unit, t) -> Instruction:
        index = self.queues[unit].popleft()
        rec = InsnTiming(index, unit, self.body[index].opcode.name, t)
        self.record[unit] = rec
        self.insns.append(rec)
        return self.body[index]

    def _finish(self, unit, t):
        self.record[unit].end = t

    def _read_cmd(self, port, addr, beats, extra_rows=0, stride=0):
        d = self.d
        self.rp_busy[port] = beats != 0
        self.rp_left[port] = self.rp_beats[port] = beats
        self.rp_addr[port] = self.rp_row[port] = addr - addr % d
        self.rp_rows[port] = (extra_rows, stride - stride % d)

    # --- the array and the LUT core: which stream heads they take this cycle ------------------

    def _array_takes(self, t, insn):
        g = self.g
        a_rdy, w_rdy = self.a.level > 0, self.w.level > 0
        if _f(insn, "dataflow"):  # output-stationary: both heads at once
            last = self.a.head_is_last()
            ready = not (last and t <= self.os_gap_until)
            both = a_rdy and w_rdy and ready
            return both, both
        final = self.ws_count == g.rows - 1
        a_take = a_rdy and self.ws_full[self.ws_use_bank]
        free = not self.ws_pending and t > self.ws_copy_until
        if ws_copy_cycles(g.rows) == 0:  # the shadows free up as the tile's first beat enters
            free = free or (a_take and self.ws_starting)
        w_take = w_rdy and (not final or free)
        return a_take, w_take

    def _lut_takes(self, t, insn):
        planes = self.g.lut_planes(_f(insn, "mode"))
        last_plane = self.lut_plane == planes - 1
        w_take = self.w.level > 0 and self.lut_full
        consumed = w_take and last_plane
        a_take = self.a.level > 0 and (not self.lut_full or consumed)
        return a_take, w_take

    def _compute_update(self, t, st, c_next, take, a_go, w_go, a_scale, w_scale):
        g = self.g
        if st == "IDLE" and take:
            self.c_insn = self._take("compute", t)
        insn = self.c_insn
        if st == "CHECK" and c_next == "POST_PARAMS":
            self.param_step = self.post_in = self.post_out = 0
        elif st == "GEMM_SETUP" and c_next == "GEMM_RUN":
            ws = not _f(insn, "dataflow")
            self.dataflow_reg = _f(insn, "dataflow")
            m, k = _f(insn, "m"), _f(insn, "k")
            a0, w0, s0 = _f(insn, "a_addr"), _f(insn, "w_addr"), _f(insn, "scale_addr")
            nb = (k + 31) >> 5
            mx = bool(g.array_modes[_f(insn, "mode")].block)
            rows = g.rows
            tiles = g.gemm_tiles(_f(insn, "dataflow"), m, k)
            a_tile = m if ws else k
            a_scales = lambda t, b: s0 + t * nb + b  # noqa: E731
            self.a.start(tiles, a_tile, lambda t, p: a0 + t * a_tile + p, mx, a_scales)
            w_scales = lambda t, b: s0 + tiles * nb + b  # noqa: E731
            if ws:
                self.w.start(tiles, rows, lambda t, p: w0 + t * rows + rows - 1 - p, mx, w_scales)
            else:
                self.w.start(tiles, k, lambda t, p: w0 + p, mx, w_scales)
            rows_ = ResultRows()
            rows_.start(_f(insn, "acc_addr"), tiles, m if ws else rows, ws, m)
            self._open((rows_, self.record["compute"], True))
        elif st == "LUT_SETUP":
            k = _f(insn, "k")
            planes = g.lut_planes(_f(insn, "mode"))
            a0, w0 = _f(insn, "a_addr"), _f(insn, "w_addr")
            self.a.start(1, k, lambda t, p: a0 + p)
            self.w.start(1, k * planes, lambda t, p: w0 + p)
            rows_ = ResultRows()
            rows_.start(_f(insn, "acc_addr"), 1, g.lut_tile_m, False, _f(insn, "m"))
            self._open((rows_, self.record["compute"], False))
        elif st == "POST_PARAMS":
            self.param_step += 1
        elif st == "POST_RUN" and self.post_in != _f(insn, "rows"):
            # the row enters the pipeline next cycle and leaves POST_LATENCY later
            self.post_writes.append(t + 1 + POST_LATENCY)
            self.post_in += 1
        self.c_state = c_next
        # the FIFOs: a row read in cycle t enters in cycle t + 1
        count = self._count_sp_read
        self.a.advance(a_go, a_scale, count)
        self.w.advance(w_go, w_scale, count)

    def _open(self, slot):
        """A new instruction's result slot: ``cur`` when it is free or frees this cycle."""
        cur = self.res_cur
        last_now = cur is not None and self.outs and self.outs[0] == self.t
        last_now = last_now and cur[0].next_is_last()
        self.opening = ("nxt" if cur is not None and not last_now else "cur", slot)

    def _count_sp_read(self, address):
        self.sram["sp_read"][address % self.sp_banks] += 1

    def _compute_results(self, t, out_now, a_take, w_take):
        insn = self.c_insn
        if a_take or w_take:
            if insn.opcode == Opcode.GEMM:
                self._array_taken(t, insn, a_take, w_take)
            else:
                self._lut_taken(t, insn, a_take, w_take)
        if a_take:
            self.a.pop()
        if w_take:
            self.w.pop()
        self.fin = self.wb[2] if self.wb is not None else None
        self.wb = None
        if out_now:
            self.outs.popleft()
            rows, rec, _ = self.res_cur
            addr, written = rows.beat()
            last = rows.done()
            self.wb = (addr, written, rec if last else None)
            if last:
                self.res_cur, self.res_nxt = self.res_nxt, None
        if self.opening is not None:
            where, slot = self.opening
            if where == "cur":
                self.res_cur = slot
            else:
                self.res_nxt = slot
            self.opening = None

    def _array_taken(self, t, insn, a_take, w_take):
        g = self.g
        self.flight_until = t + 2 * g.rows + g.cols + 3 + g.pe_stages
        if _f(insn, "dataflow"):
            if self.a.head_is_last():  # the tile's last step
                self.os_gap_until = t + g.rows - 1
                base = t + os_latency(g.rows, g.cols, stages=g.pe_stages)
                self.outs.extend(base + r for r in range(g.rows))
            return
        latched = w_take and self.ws_count == g.rows - 1
        if w_take:
            if self.ws_count == g.rows - 1:
                self.ws_count = 0
                self.ws_full[self.ws_load_bank] = True
                self.ws_load_bank ^= 1
                self.ws_pending = True
            else:
                self.ws_count += 1
        if a_take:
            self.outs.append(t + ws_latency(g.rows, g.cols, g.pe_stages))
            if self.ws_starting:  # (a latch in this same cycle refills the shadows)
                self.ws_pending = latched
                self.ws_copy_until = t + ws_copy_cycles(g.rows) - 1
            self.ws_starting = self.a.head_is_last()
            if self.ws_starting:
                self.ws_full[self.ws_use_bank] = False
                self.ws_use_bank ^= 1

    def _lut_taken(self, t, insn, a_take, w_take):
        g = self.g
        planes = g.lut_planes(_f(insn, "mode"))
        last_plane = self.lut_plane == planes - 1
        if w_take:
            if last_plane and self.lut_last:
                self.outs.extend(t + 1 + r for r in range(g.lut_tile_m))
            self.lut_plane = 0 if last_plane else self.lut_plane + 1
        if a_take:
            self.lut_full = True
            self.lut_last = self.a.head_is_last()
        elif w_take and last_plane:
            self.lut_full = False


def run_cycles(program: Program, *, max_cycles: int = 100_000_000) -> Timing:
    """Step ``program`` cycle by cycle from START to DONE; return its timing."""
    m = _Machine(program)
    while True:
        if m.t >= max_cycles:
            raise RuntimeError(f"no DONE within {max_cycles} cycles")
        if m.step():
            break
    return Timing(m.counters, m.insns, m.sram, m.dram_read_bytes, m.dram_write_bytes, m.causes)

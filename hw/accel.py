"""The accelerator: instruction fetch, three decoupled units with dependency tokens, the
scratchpad and accumulator memories, the systolic array, the LUT core, the post-processing unit,
an AXI4 master for DRAM and the AXI4-Lite control registers (``qaccel.isa`` has the
instruction set, ``qaccel.csr`` the register map, ``sim.executor`` the results it must give).

**Ports.** ``m_axi``: AXI4 master, 32-bit addresses, ``dram.bytes_per_cycle`` data bytes
(``hw.axi``; cocotbext-axi ``AxiBus.from_prefix(dut, "m_axi_")``). ``s_axil``: AXI4-Lite slave,
12-bit addresses (``hw.csr``; ``AxiLiteBus.from_prefix(dut, "s_axil_")``). ``clk``, ``rst``
(synchronous, active high).

**A run.** The host writes PROG_ADDR and PROG_LEN and sets CTRL.START. Fetch reads blocks of
``isa.FETCH_WORDS`` instruction words in one DMA read each (read port 1; LOAD has port 0 and
priority) and hands them one per cycle, in order, to their units' queues (four entries
each). A unit takes the instruction at the head of its queue when the tokens it pops are
there, executes it, then pushes its tokens. HALT stops fetch; the run ends when the queues
are empty and the units idle: STATUS.DONE, with ERROR_CODE 0, or
``isa.ErrorCode.TOKEN`` if a channel still holds tokens.

**Units.**
- LOAD: one two-dimensional DMA read of ``y_size`` DRAM rows of ``x_size`` memory rows (up to
  ``dram.read_bursts`` bursts in flight); each memory row is written as its
  last beat arrives (accumulator rows: each element's low ``acc_elem_bits`` bits, invalid
  flags cleared).
- STORE: per DRAM row one DMA write; rows read from memory one at a time, sent beat by beat
  (accumulator elements sign-extended to ``acc_elem_bytes``).
- GEMM: rows stream from the scratchpad into the array (output-stationary: activation and weight
  rows of every step together, MX scale rows beside them; weight-stationary: the weight rows
  bottom first, then the activation rows); result rows are written, or added with saturation at
  the memory's element width, into the accumulator memory. LUT_GEMM does the same with the LUT
  core (activation groups, weight planes). POST reads the three parameter rows, then one
  accumulator row (and residual row) per cycle through ``hw.post.PostProcessor`` into the
  scratchpad. The compute unit finishes an instruction when its last result row is written.

**Faults.** Each unit checks its instruction before it executes it (the same rules as
``qaccel.program.check_program``): a fault sets ERROR_CODE and ERROR_INSN, stops fetch, lets the
unit that is mid-instruction finish it, discards the queued instructions and ends the run, so
the accelerator is idle again and never hangs. Fetch faults: an illegal opcode, bits set above
an opcode's fields, PROG_LEN instructions without HALT. Token faults: a push into a full
channel, a deadlock (every unit waits for a token that no instruction in flight will push).

**Memories** (``hw.banked``). The scratchpad and the accumulator memory are split into the
configured banks (row a in bank a % banks), each one ``amaranth.lib.memory`` array with one read
and one write port, so it maps to a block RAM. Ports are shared with fixed priority: results
first (POST's scratchpad writes, the compute unit's accumulator reads and writes: they cannot
wait), then the operand streams (activations before weights), then LOAD's writes and STORE's
reads, which wait for their bank.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from hw.axi import axi4_signature
from hw.banked import BankedMemory
from hw.csr import AxiLiteSignature, ControlRegisters
from hw.dma import Dma
from hw.post import PostProcessor
from qaccel import config as qconfig
from qaccel import csr as qcsr
from qaccel.isa import (
    FETCH_WORDS,
    QUEUE_DEPTH,
    STREAM_DEPTH,
    TOKEN_BITS,
    AccElement,
    ErrorCode,
    Geometry,
    Opcode,
)

__all__ = ["TIMING", "Accelerator"]

# The timing contract, rule by rule (the datasheet prints it; sim/ models it). "Cycle t" is a
# rising edge; "in cycle t" means the state during the cycle that edge t ends.
TIMING = (
    "Tokens: a unit takes its queue head in a cycle in which every channel it pops holds a "
    "token (the pops take effect at the end of that cycle); it pushes in the last cycle of the "
    "instruction; a token pushed in cycle t can be popped in cycle t + 1.",
    "Queues: a word fetch writes in cycle t is at its unit's queue head from cycle t + 1; a "
    "queue holds 4 words.",
    "Fetch: START -> next cycle REQUEST. REQUEST: a DMA read of the next block of instruction "
    "words (FETCH_WORDS, or those left before PROG_LEN; the beats that cover them) on read "
    "port 1 (LOAD has port 0 and priority per burst; hw.dma's contract gives the beats and "
    "'done'); from the cycle after 'done', DECODE hands one word per cycle to its queue if the "
    "queue has room (else DECODE repeats); the cycle after the block's last word is REQUEST. "
    "HALT ends fetching; PROG_LEN words without HALT: NO_HALT in REQUEST.",
    "Every unit: the cycle after the take is CHECK (one cycle; a fault ends the instruction "
    "there).",
    "LOAD: ISSUE (one command on DMA read port 0 for all y_size DRAM rows, x_size * "
    "row_bytes / bus bytes beats each, dram_stride bytes apart; accepted when the port is "
    "free), then RECEIVE until the port's 'done'; FINISH follows in the next cycle. The DMA "
    "keeps up to dram.read_bursts bursts in flight (hw.dma's contract). A memory row completes "
    "with its last beat in cycle t; it asks its bank's write port from cycle t + 1 and, until "
    "granted, no beat is taken. FINISH lasts until the last row is written (pushes in that "
    "cycle).",
    "STORE: per DRAM row y: ISSUE (a DMA write command accepted when the write port is free), "
    "then per memory row: READ (asks its bank's read port until granted), LATCH (one cycle), "
    "SEND (one beat per cycle in which wready is high); after the DRAM row's last beat, WAIT "
    "until the write port's 'done', then the next ISSUE or FINISH (one cycle, pushes).",
    "GEMM: SETUP (one cycle, repeated while the array is busy if the dataflow changes), then "
    "RUN: the activation and weight streams each read one scratchpad row per cycle in which "
    "their bank grants it and their 4-entry FIFO (rows in flight counted) has room; the array "
    "takes the FIFO heads by its stream contract (hw.array), tile after tile (each tile's last "
    "row carries 'last'); MX streams spend one read on the block's scale row before the first "
    "row of each 32-row block of a tile. RUN lasts until every row has been read and taken "
    "from the FIFOs (the next cycle is IDLE). Each result row leaving the array in cycle t "
    "reads its accumulator row in cycle t and writes it in cycle t + 1 (a row written in the "
    "cycle it is read is forwarded); the instruction ends (pushes) in the first cycle after "
    "its last result row's write.",
    "LUT_GEMM: as GEMM with the LUT core (activation groups on the activation stream, weight "
    "planes on the weight stream, hw.lut_core's contract), tile_m result rows.",
    "Result slots: the compute unit has two. In IDLE it takes a GEMM when the second slot is "
    "free and the first holds nothing or a GEMM (so a GEMM is fed while the one before it "
    "still drains, and a GEMM set up while another's results come waits in the second slot "
    "until the cycle after that one's last result row leaves); it takes a LUT_GEMM or POST "
    "only when no instruction is in flight (no slot, no write, no end pending). The unit is "
    "busy while it is out of IDLE or anything is in flight.",
    "POST: PARAMS (four cycles: the bias, b and c rows are read in the first three), then RUN: "
    "row i's accumulator (and residual) row is read in cycle t_i = t_0 + i, enters the "
    "post-processing pipeline in cycle t_i + 1, leaves and is written in cycle t_i + 5; the "
    "instruction ends (pushes) in the cycle after the last row's write.",
    "Bank priority (hw.banked): scratchpad writes: POST, then LOAD; scratchpad reads: the "
    "activation stream (and POST's residual), the weight stream, STORE; accumulator reads and "
    "writes: the compute unit, then STORE (reads) and LOAD (writes).",
    "The run ends (DONE) in the first cycle in which fetch has stopped and every queue and unit "
    "is idle.",
    "DRAM: the cycle counts `qaccel run` predicts (sim.cycle, sim.fast) assume the memory of "
    "sim.dram: arready, awready and wready always high, a burst's first R beat 1 + "
    "dram.latency_cycles cycles after its AR handshake and one beat per cycle after it, a B "
    "response 1 + dram.latency_cycles cycles after a burst's last W beat. Another memory (or "
    "back-pressure) changes the cycle counts, never the results.",
)

# Token channels: (producer, consumer)
LC, CL, CS, SC = range(4)


def _divide(x, divisor: int, bits: int):
    """floor(x / divisor) for a ``bits``-bit unsigned x: a shift, or a multiply by the rounded-up
    reciprocal (exact for every x below 2**bits with this many fraction bits)."""
    if divisor & (divisor - 1) == 0:
        return x >> (divisor.bit_length() - 1)
    shift = bits + divisor.bit_length()
    return (x * Const(-(-(1 << shift) // divisor))) >> shift


def _popcount(bits) -> object:
    total = Const(0, 1)
    for i in range(len(bits)):
        total = total + bits[i]
    return total


class Accelerator(wiring.Component):
    """The whole accelerator of a configuration (see the module docstring)."""

    def __init__(self, cfg: qconfig.AcceleratorConfig):
        self._cfg = cfg
        self._g = Geometry.of(cfg)
        super().__init__(
            {
                "m_axi": Out(axi4_signature(32, self._g.data_bytes)),
                "s_axil": In(AxiLiteSignature(12)),
            }
        )

    @classmethod
    def from_config(cls, cfg: qconfig.AcceleratorConfig) -> Accelerator:
        return cls(cfg)

    geometry = property(lambda self: self._g)

    # ------------------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        g = self._g
        self._m = m
        m.submodules.csr = regs = ControlRegisters()
        m.submodules.dma = dma = Dma(
            g.data_bytes, read_clients=2, read_bursts=self._cfg.dram.read_bursts
        )
        wiring.connect(m, wiring.flipped(self.s_axil), regs.s_axil)
        wiring.connect(m, wiring.flipped(self.m_axi), dma.m_axi)
        self._regs, self._dma = regs, dma

        # --- run state, errors, counters --------------------------------------------------
        self.running = running = Signal()
        self.aborting = Signal()
        self.err_code = Signal(8)
        self.err_insn = Signal(32)
        self._errors = []  # (condition, code, index), first listed wins in one cycle
        self._can_start_sigs = []
        self.counters = {c.name: Signal(64, name=f"count_{c.name.lower()}") for c in qcsr.COUNTERS}
        self._incs = {name: [] for name in self.counters}
        self.tokens = [Signal(TOKEN_BITS, name=f"tokens{i}") for i in range(4)]
        self._tok_dec = [[] for _ in range(4)]
        self._tok_inc = [[] for _ in range(4)]  # (condition, index)
        self.start_run = Signal()
        m.d.comb += self.start_run.eq(regs.start & ~running)

        # --- memories ---------------------------------------------------------------------
        self._acc_layout = data.StructLayout(
            {
                "data": data.ArrayLayout(signed(g.acc_elem_bits), g.acc_cols),
                "invalid": data.ArrayLayout(1, g.acc_cols),
            }
        )
        # Ports in priority order: the compute unit's results cannot wait (the array and the
        # post-processing pipeline have no back-pressure), LOAD and STORE can.
        mem = self._cfg.memory
        m.submodules.sp = sp = BankedMemory(
            8 * g.sp_row_bytes, g.sp_rows, banks=mem.scratchpad_banks, readers=3, writers=2
        )
        m.submodules.acc = acc = BankedMemory(
            self._acc_layout, g.acc_rows, banks=mem.accumulator_banks, readers=2, writers=2
        )
        self.sp_post_w, self.sp_load_w = sp.write
        self.sp_a, self.sp_w, self.sp_store_r = sp.read
        self.acc_comp_w, self.acc_load_w = acc.write
        self.acc_comp_r, self.acc_store_r = acc.read

        # --- queues -----------------------------------------------------------------------
        self.insn_bits = 8 * g.insn_bytes
        self.queues = {}
        for unit in ("load", "compute", "store"):
            fifo = SyncFIFO(width=self.insn_bits + 32, depth=QUEUE_DEPTH)
            m.submodules[f"{unit}_queue"] = fifo
            self.queues[unit] = fifo

        self._fetch(m)
        self._load_unit(m)
        self._store_unit(m)
        self._compute_unit(m)
        self._run_control(m)
        return m

    @property
    def _mx(self) -> bool:
        return any(s.block for s in self._g.array_modes)

    # --- helpers --------------------------------------------------------------------------

    def _error(self, cond, code: ErrorCode, index) -> None:
        """Raise ``code`` for instruction ``index`` in cycles where ``cond`` holds."""
        self._errors.append((cond, int(code), index))

    def _raise(self, code: ErrorCode, index) -> None:
        """Raise ``code`` in the cycles the enclosing If/State is active."""
        here = Signal(name=f"raise_{code.name.lower()}")
        self._m.d.comb += here.eq(1)
        self._errors.append((here, int(code), index))

    def _count(self, name: str, amount) -> None:
        """Add ``amount`` to counter ``name`` in the cycles the enclosing If/State is active."""
        amount = Value.cast(amount)
        here = Signal(len(amount), name=f"add_{name.lower()}")
        self._m.d.comb += here.eq(amount)
        self._incs[name].append(here)

    def _view(self, op: Opcode, word):
        return data.View(self._g.layout(op), word[: self._g.layout(op).size])

    def _unit_head(self, m, unit: str, pops: list[tuple[str, int]]):
        """The queue head, whether its tokens are there, and a ``take`` strobe: returns
        (head word, head index, can_start, take). Popping happens when ``take`` is high."""
        fifo = self.queues[unit]
        word = fifo.r_data[: self.insn_bits]
        index = fifo.r_data[self.insn_bits :]
        header = data.View(self._g.layout(Opcode.HALT), word[:8])
        ok = Const(1)
        for flag, channel in pops:
            ok = ok & (~getattr(header, flag) | (self.tokens[channel] != 0))
        can_start = Signal(name=f"{unit}_can_start")
        take = Signal(name=f"{unit}_take")
        m.d.comb += can_start.eq(fifo.r_rdy & ok & ~self.aborting)
        self._can_start_sigs.append(can_start)
        for flag, channel in pops:
            self._tok_dec[channel].append(take & getattr(header, flag))
        m.d.comb += fifo.r_en.eq(take | (self.aborting & fifo.r_rdy))
        stall = Signal(name=f"{unit}_stall")
        m.d.comb += stall.eq(fifo.r_rdy & ~ok & self.running & ~self.aborting)
        self._count(f"{unit.upper()}_STALL", stall)
        return word, index, can_start, take, stall

    def _push(self, finish, word, index, pushes: list[tuple[str, int]]) -> None:
        header = data.View(self._g.layout(Opcode.HALT), word[:8])
        for flag, channel in pushes:
            self._tok_inc[channel].append((finish & getattr(header, flag), index))

    # --- fetch ----------------------------------------------------------------------------

    def _fetch(self, m):
        g, regs = self._g, self._regs
        port = self._dma.read[1]
        d, ib = g.data_bytes, g.insn_bytes
        words = Array(Signal(self.insn_bits, name=f"fetched{i}") for i in range(FETCH_WORDS))
        pc = Signal(32)  # the next word to decode
        count = Signal(range(FETCH_WORDS + 1))  # words in the block
        index = Signal(range(FETCH_WORDS + 1))  # the block's next word to decode
        beat = Signal(16)
        self.fetch_halted = Signal()
        self.fetch_blocked = Signal()
        self.halt_index = Signal(32)
        addr = Signal(32)
        left = Signal(32)
        m.d.comb += [addr.eq(regs.prog_addr + pc * ib), left.eq(regs.prog_len - pc)]
        # a block: the next FETCH_WORDS words, or those left before PROG_LEN
        block = Signal(range(FETCH_WORDS + 1))
        m.d.comb += block.eq(Mux(left < FETCH_WORDS, left, FETCH_WORDS))
        if ib >= d:
            beats = block * (ib // d)
        else:  # narrow words: the beats that cover them (the first may start mid-beat)
            lanes = d // ib
            first_lane = addr[ib.bit_length() - 1 : d.bit_length() - 1]
            beats = (first_lane + block + lanes - 1) >> (lanes.bit_length() - 1)
        lane0 = Signal(signed(17))  # the block word in lane 0 of the current beat
        word = words[index]
        opcode = word[:4]
        sizes = Array(Const(g.layout(op).size, 16) for op in Opcode)
        target = Signal(2)  # 0 load, 1 compute, 2 store
        m.d.comb += target.eq(Mux(opcode == Opcode.LOAD, 0, Mux(opcode == Opcode.STORE, 2, 1)))
        fifos = [self.queues[u] for u in ("load", "compute", "store")]
        w_rdy = Array(f.w_rdy for f in fifos)
        for f in fifos:
            m.d.comb += f.w_data.eq(Cat(word, pc))
        legal = opcode <= max(op.value for op in Opcode)
        extra = Signal()
        m.d.comb += extra.eq((word >> sizes[opcode[:3]]) != 0)

        with m.FSM(name="fetch") as fsm:
            with m.State("IDLE"), m.If(self.start_run):
                m.d.sync += [pc.eq(0), self.fetch_halted.eq(0)]
                m.next = "REQUEST"
            with m.State("REQUEST"):
                with m.If(self.aborting):
                    m.next = "IDLE"
                with m.Elif(pc == regs.prog_len):
                    self._raise(ErrorCode.NO_HALT, pc)
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += [
                        port.cmd.valid.eq(1),
                        port.cmd.payload.addr.eq(addr),
                        port.cmd.payload.beats.eq(beats),
                        # driven, even as zero: an undriven field is X in the Verilog
                        port.cmd.payload.extra_rows.eq(0),
                        port.cmd.payload.stride.eq(0),
                    ]
                    with m.If(port.cmd.ready):
                        m.d.sync += [beat.eq(0), count.eq(block), index.eq(0)]
                        if ib < d:
                            m.d.sync += lane0.eq(-first_lane)
                        m.next = "RECEIVE"
            with m.State("RECEIVE"):
                m.d.comb += port.data.ready.eq(1)
                with m.If(port.data.valid):
                    if ib >= d:
                        per = ib // d
                        part = beat[: (per.bit_length() - 1)] if per > 1 else 0
                        slot = beat >> (per.bit_length() - 1)
                        for i in range(FETCH_WORDS):
                            with m.If(slot == i):
                                m.d.sync += words[i].word_select(part, 8 * d).eq(port.data.payload)
                    else:
                        for k in range(lanes):
                            lane = port.data.payload[8 * ib * k : 8 * ib * (k + 1)]
                            for i in range(FETCH_WORDS):
                                with m.If(lane0 + k == i):
                                    m.d.sync += words[i].eq(lane)
                        m.d.sync += lane0.eq(lane0 + lanes)
                    m.d.sync += beat.eq(beat + 1)
                with m.If(port.done):
                    with m.If(port.error):
                        self._raise(ErrorCode.BUS, pc)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "DECODE"
            with m.State("DECODE"):
                with m.If(self.aborting):
                    m.next = "IDLE"
                with m.Elif(~legal):
                    self._raise(ErrorCode.ILLEGAL_OPCODE, pc)
                    m.next = "IDLE"
                with m.Elif(extra | ((opcode == Opcode.HALT) & (word[4:8] != 0))):
                    self._raise(ErrorCode.ILLEGAL_FIELD, pc)  # HALT carries no tokens
                    m.next = "IDLE"
                with m.Elif(opcode == Opcode.HALT):
                    m.d.sync += [self.fetch_halted.eq(1), self.halt_index.eq(pc)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += self.fetch_blocked.eq(~w_rdy[target])
                    with m.If(w_rdy[target]):
                        for i, f in enumerate(fifos):
                            m.d.comb += f.w_en.eq(target == i)
                        m.d.sync += [pc.eq(pc + 1), index.eq(index + 1)]
                        with m.If(index + 1 == count):
                            m.next = "REQUEST"
        self.fetch_active = Signal()
        m.d.comb += self.fetch_active.eq(~fsm.ongoing("IDLE"))

    # --- the load unit --------------------------------------------------------------------

    def _acc_row_from_dram(self, bits, int32):
        """An accumulator row from its DRAM bytes: NATIVE elements' low acc_elem_bits, or
        INT32 elements sign-extended (``qaccel.isa.AccElement``); invalid flags clear."""
        g = self._g
        row = Signal(self._acc_layout)
        stride = 8 * g.acc_elem_bytes
        for j in range(g.acc_cols):
            native = bits[j * stride : j * stride + g.acc_elem_bits]
            word = bits[32 * j : 32 * j + 32].as_signed()
            self._m.d.comb += row.data[j].eq(Mux(int32, word, native.as_signed()))
        return row

    def _acc_row_to_dram(self, row, int32):
        """An accumulator row's DRAM bytes and its INT32 saturations (a bit per element)."""
        g = self._g
        out = Signal(8 * max(g.acc_row_bytes, g.acc_dram_row_bytes(AccElement.INT32)))
        native = Signal(8 * g.acc_row_bytes)
        narrow = Signal(32 * g.acc_cols)
        saturated = Signal(g.acc_cols)
        stride = 8 * g.acc_elem_bytes
        top, bottom = (1 << 31) - 1, -(1 << 31)
        for j in range(g.acc_cols):
            value = row.data[j]
            ext = Cat(value, value[-1].replicate(stride - g.acc_elem_bits))
            over, under = value > top, value < bottom
            self._m.d.comb += [
                native[j * stride : (j + 1) * stride].eq(ext),
                narrow[32 * j : 32 * j + 32].eq(Mux(over, top, Mux(under, bottom, value))),
                saturated[j].eq(over | under),
            ]
        self._m.d.comb += out.eq(Mux(int32, narrow, native))
        return out, saturated

    @staticmethod
    def _foreign_tokens(v):
        """Token flags toward a unit LOAD/STORE does not have (load: prev; store: next)."""
        is_load = v.opcode == Opcode.LOAD
        return Mux(is_load, v.pop_prev | v.push_prev, v.pop_next | v.push_next)

    def _row_size(self, v):
        """A LOAD/STORE memory row in DRAM: (bytes, beats, the widest of all kinds)."""
        g, d = self._g, self._g.data_bytes
        acc32 = g.acc_dram_row_bytes(AccElement.INT32)
        row_bytes = Mux(v.mem, Mux(v.elem, acc32, g.acc_row_bytes), g.sp_row_bytes)
        row_beats = Mux(v.mem, Mux(v.elem, acc32 // d, g.acc_row_bytes // d), g.sp_row_bytes // d)
        return row_bytes, row_beats, max(g.acc_row_bytes, acc32, g.sp_row_bytes)

    def _dma_checks(self, m, insn, busy_state, index, row_bytes, row_beats):
        """LOAD/STORE field checks; returns the 'bad' signal (an error raised)."""
        g = self._g
        v = insn
        bad = Signal()
        # zero sizes, an element format for raw scratchpad bytes, tokens the unit does not have
        zero = (v.y_size == 0) | (v.x_size == 0) | (~v.mem & v.elem) | self._foreign_tokens(v)
        sram_over = (v.sram_addr + v.y_size * v.x_size) > Mux(v.mem, g.acc_rows, g.sp_rows)
        align = (v.dram_addr[: (g.data_bytes.bit_length() - 1)] != 0) | (
            v.dram_stride[: (g.data_bytes.bit_length() - 1)] != 0
        )
        reach = v.dram_addr + (v.y_size - 1) * v.dram_stride + v.x_size * row_bytes
        dram_over = reach > g.dram_bytes
        beats_over = v.x_size * row_beats > 0xFFFF
        m.d.comb += bad.eq(zero | sram_over | align | dram_over | beats_over)
        self._error(busy_state & (zero | beats_over), ErrorCode.ILLEGAL_FIELD, index)
        self._error(busy_state & ~zero & sram_over & ~v.mem, ErrorCode.SCRATCHPAD_RANGE, index)
        self._error(busy_state & ~zero & sram_over & v.mem, ErrorCode.ACCUMULATOR_RANGE, index)
        self._error(busy_state & ~zero & (align | dram_over), ErrorCode.DRAM_RANGE, index)
        return bad

    def _dma_unit(self, m, unit: str, op: Opcode, pops):
        """What LOAD and STORE share: the queue head, the latched instruction, its checks, the
        row walk registers. Returns a namespace of them."""
        g = self._g
        u = SimpleNamespace()
        u.word, u.index, u.can_start, u.take, _ = self._unit_head(m, unit, pops)
        u.insn_word, u.insn_index = Signal(self.insn_bits), Signal(32)
        u.v = v = self._view(op, u.insn_word)
        u.row_bytes, u.row_beats, u.widest = self._row_size(v)
        u.y, u.sram_row, u.dram_addr = Signal(16), Signal(32), Signal(32)
        u.beat = Signal(range(u.widest // g.data_bytes + 1))
        u.row_reg = Signal(8 * u.widest)
        u.finish, u.busy, u.checking, u.bus_error = Signal(), Signal(), Signal(), Signal()
        u.bad = self._dma_checks(m, v, u.checking, u.insn_index, u.row_bytes, u.row_beats)
        return u

    def _dma_front(self, m, u, port, issued: list, after_issue: str, rows: bool) -> None:
        """The IDLE, CHECK and ISSUE states of a LOAD/STORE unit (inside its FSM): take the
        head, check it, issue one DMA command per DRAM row, or (``rows``) one two-dimensional
        command for all of them."""
        v = u.v
        with m.State("IDLE"):
            m.d.comb += u.take.eq(u.can_start)
            with m.If(u.can_start):
                m.d.sync += [u.insn_word.eq(u.word), u.insn_index.eq(u.index)]
                m.next = "CHECK"
        with m.State("CHECK"):
            m.d.comb += [u.checking.eq(1), u.busy.eq(1)]
            with m.If(u.bad):
                m.next = "IDLE"
            with m.Else():
                m.d.sync += [
                    u.y.eq(0),
                    u.sram_row.eq(v.sram_addr),
                    u.dram_addr.eq(v.dram_addr),
                    u.bus_error.eq(0),
                ]
                m.next = "ISSUE"
        with m.State("ISSUE"):
            m.d.comb += [
                u.busy.eq(1),
                port.cmd.valid.eq(1),
                port.cmd.payload.addr.eq(u.dram_addr),
                port.cmd.payload.beats.eq(v.x_size * u.row_beats),
            ]
            if rows:
                m.d.comb += [
                    port.cmd.payload.extra_rows.eq(v.y_size - 1),
                    port.cmd.payload.stride.eq(v.dram_stride),
                ]
            with m.If(port.cmd.ready):
                m.d.sync += [*issued, u.dram_addr.eq(u.dram_addr + v.dram_stride)]
                m.next = after_issue

    def _dma_row_done(self, m, u, port, rows: bool) -> None:
        """When the DMA command is done: note a bus error, then the next row's ISSUE or
        FINISH (after all of them, with ``rows``: one command for all)."""
        with m.If(port.done):
            with m.If(port.error):
                m.d.sync += u.bus_error.eq(1)
            m.d.sync += u.y.eq(u.y + 1)
            with m.If((u.y + 1 == u.v.y_size) | rows):
                m.next = "FINISH"
            with m.Else():
                m.next = "ISSUE"

    def _load_unit(self, m):
        g = self._g
        port = self._dma.read[0]
        d = g.data_bytes
        u = self._dma_unit(m, "load", Opcode.LOAD, [("pop_next", CL)])
        v, sram_row, beat, row_reg = u.v, u.sram_row, u.beat, u.row_reg
        row_beats, finish, busy, bus_error = u.row_beats, u.finish, u.busy, u.bus_error
        insn_word, insn_index = u.insn_word, u.insn_index
        pending = Signal()  # a completed row waits for its bank's write port

        # a completed row is written from the cycle after its last beat, when its bank is free;
        # until then no new beat is taken
        written = Signal()
        m.d.comb += [
            self.sp_load_w.addr.eq(sram_row),
            self.sp_load_w.data.eq(row_reg[: 8 * g.sp_row_bytes]),
            self.sp_load_w.req.eq(pending & ~v.mem),
            self.acc_load_w.addr.eq(sram_row),
            self.acc_load_w.data.eq(self._acc_row_from_dram(row_reg, v.elem)),
            self.acc_load_w.req.eq(pending & v.mem),
            written.eq(Mux(v.mem, self.acc_load_w.grant, self.sp_load_w.grant)),
        ]
        with m.If(written):
            m.d.sync += [sram_row.eq(sram_row + 1), pending.eq(0)]

        with m.FSM(name="load"):
            self._dma_front(m, u, port, [beat.eq(0)], "RECEIVE", rows=True)
            with m.State("RECEIVE"):
                m.d.comb += [busy.eq(1), port.data.ready.eq(~pending | written)]
                with m.If(port.data.valid & port.data.ready):
                    m.d.sync += row_reg.word_select(beat, 8 * d).eq(port.data.payload)
                    self._count("DRAM_READ_BYTES", Const(d))
                    with m.If(beat == row_beats - 1):
                        m.d.sync += [beat.eq(0), pending.eq(1)]
                    with m.Else():
                        m.d.sync += beat.eq(beat + 1)
                self._dma_row_done(m, u, port, rows=True)
            with m.State("FINISH"):
                # done once the last row is written
                m.d.comb += busy.eq(1)
                with m.If(~pending | written):
                    m.d.comb += finish.eq(~bus_error)
                    with m.If(bus_error):
                        self._raise(ErrorCode.BUS, insn_index)
                    m.next = "IDLE"
        self._push(finish, insn_word, insn_index, [("push_next", LC)])
        self._count("LOAD_BUSY", busy)
        self._count("INSNS", finish)
        self.load_idle = ~busy

    # --- the store unit -------------------------------------------------------------------

    def _store_unit(self, m):
        g = self._g
        port = self._dma.write
        d = g.data_bytes
        u = self._dma_unit(m, "store", Opcode.STORE, [("pop_prev", CS)])
        v, sram_row, beat, row_reg = u.v, u.sram_row, u.beat, u.row_reg
        row_beats, finish, busy, bus_error = u.row_beats, u.finish, u.busy, u.bus_error
        insn_word, insn_index = u.insn_word, u.insn_index
        x = Signal(16)
        m.d.comb += [self.sp_store_r.addr.eq(sram_row), self.acc_store_r.addr.eq(sram_row)]
        acc_row = data.View(self._acc_layout, self.acc_store_r.data)
        acc_bytes, narrowed = self._acc_row_to_dram(acc_row, v.elem)
        m.d.comb += [port.data.payload.eq(row_reg.word_select(beat, 8 * d))]

        with m.FSM(name="store"):
            self._dma_front(m, u, port, [x.eq(0)], "READ", rows=False)
            with m.State("READ"):  # ask for the row; its data comes the cycle after the grant
                m.d.comb += [
                    busy.eq(1),
                    self.sp_store_r.req.eq(~v.mem),
                    self.acc_store_r.req.eq(v.mem),
                ]
                with m.If(Mux(v.mem, self.acc_store_r.grant, self.sp_store_r.grant)):
                    m.next = "LATCH"
            with m.State("LATCH"):
                m.d.comb += busy.eq(1)
                with m.If(v.mem):
                    m.d.sync += row_reg.eq(acc_bytes)
                    self._count("INVALID", _popcount(acc_row.invalid.as_value()))
                    with m.If(v.elem):
                        self._count("SATURATIONS", _popcount(narrowed))
                with m.Else():
                    m.d.sync += row_reg.eq(self.sp_store_r.data)
                m.d.sync += [beat.eq(0), sram_row.eq(sram_row + 1)]
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += [busy.eq(1), port.data.valid.eq(1)]
                with m.If(port.data.ready):
                    self._count("DRAM_WRITE_BYTES", Const(d))
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(beat == row_beats - 1):
                        m.d.sync += x.eq(x + 1)
                        with m.If(x + 1 == v.x_size):
                            m.next = "WAIT"
                        with m.Else():
                            m.next = "READ"
            with m.State("WAIT"):
                m.d.comb += busy.eq(1)
                self._dma_row_done(m, u, port, rows=False)
            with m.State("FINISH"):
                m.d.comb += [busy.eq(1), finish.eq(~bus_error)]
                with m.If(bus_error):
                    self._raise(ErrorCode.BUS, insn_index)
                m.next = "IDLE"
        self._push(finish, insn_word, insn_index, [("push_prev", SC)])
        self._count("STORE_BUSY", busy)
        self._count("INSNS", finish)
        self.store_idle = ~busy

    # --- the compute unit -----------------------------------------------------------------

    def _row_stream(self, m, name: str, port, base, tiles, tile, stride, reverse, scale=None):
        """Read ``tiles`` tiles of ``tile`` rows through the banked read ``port`` into a FIFO,
        one row per granted cycle while there is room: row p of tile t is ``base + t * stride +
        p`` (``reverse``: ``tile - 1 - p``). An entry is the row and ``last`` (a tile's last row).
        With ``scale`` = (enable, address of tile t's block b, bits): before the first row of
        each 32-row block of a tile, one read fetches the block's scale row, whose low ``bits``
        ride in every entry of the block (between the row and ``last``). Returns (start strobe,
        FIFO, drained)."""
        depth = STREAM_DEPTH
        row_bits = len(port.data)
        scale_bits = scale[2] if scale else 0
        fifo = SyncFIFO(width=row_bits + scale_bits + 1, depth=depth)
        m.submodules[f"{name}_fifo"] = fifo
        start = Signal(name=f"{name}_start")
        pos = Signal(20, name=f"{name}_pos")  # the row within the tile
        tile_index = Signal(17, name=f"{name}_tile")
        offset = Signal(32, name=f"{name}_offset")  # tile_index * stride
        pending = Signal(name=f"{name}_pending")
        pending_last = Signal(name=f"{name}_pending_last")
        room = Signal(name=f"{name}_room")
        go = Signal(name=f"{name}_go")
        tile_end = pos == tile - 1
        left = ~start & (tile_index < tiles)
        m.d.comb += room.eq(fifo.level + pending < depth)
        row_addr = base + offset + Mux(reverse, tile - 1 - pos, pos)
        scale_reg = Signal(max(scale_bits, 1), name=f"{name}_scale")
        have = None
        if scale:
            enable, scale_addr, bits = scale
            block = pos >> 5
            have = Signal(17, name=f"{name}_scale_block")  # block + 1 whose scales are held
            need = Signal(name=f"{name}_need_scale")
            fetch = Signal(name=f"{name}_fetch_scale")
            fetched = Signal(name=f"{name}_scale_pending")
            m.d.comb += [
                need.eq(enable & (have != block + 1)),
                port.addr.eq(Mux(need, scale_addr(tile_index, block), row_addr)),
                port.req.eq(left & (need | room)),
                fetch.eq(left & need & port.grant),
                go.eq(left & ~need & room & port.grant),
            ]
            with m.If(start):
                m.d.sync += have.eq(0)
            with m.Elif(fetch):
                m.d.sync += have.eq(block + 1)
            with m.Elif(go & tile_end):  # the next tile fetches its own scales
                m.d.sync += have.eq(0)
            m.d.sync += fetched.eq(fetch)
            with m.If(fetched):
                m.d.sync += scale_reg.eq(port.data[:bits])
        else:
            m.d.comb += [
                port.addr.eq(row_addr),
                port.req.eq(left & room),
                go.eq(left & room & port.grant),
            ]
        m.d.sync += [pending.eq(go), pending_last.eq(go & tile_end)]
        with m.If(start):
            m.d.sync += [pos.eq(0), tile_index.eq(0), offset.eq(0)]
        with m.Elif(go & tile_end):
            m.d.sync += [pos.eq(0), tile_index.eq(tile_index + 1), offset.eq(offset + stride)]
        with m.Elif(go):
            m.d.sync += pos.eq(pos + 1)
        parts = [port.data, scale_reg[:scale_bits]] if scale else [port.data]
        m.d.comb += [fifo.w_en.eq(pending), fifo.w_data.eq(Cat(*parts, pending_last))]
        drained = Signal(name=f"{name}_drained")  # every row read and taken from the FIFO
        m.d.comb += drained.eq(~start & (tile_index >= tiles) & ~pending & (fifo.level == 0))
        return start, fifo, drained

    def _compute_unit(self, m):
        g = self._g
        word, index, can_start, take, _ = self._unit_head(
            m, "compute", [("pop_prev", LC), ("pop_next", SC)]
        )
        insn_word = Signal(self.insn_bits)
        insn_index = Signal(32)
        opcode = insn_word[:4]
        gemm = self._view(Opcode.GEMM, insn_word)
        lut = self._view(Opcode.LUT_GEMM, insn_word)
        post = self._view(Opcode.POST, insn_word)
        busy = Signal()
        finish = Signal()
        checking = Signal()

        # --- checks (as qaccel.program._check_insn) ----------------------------------------
        bad = Signal()
        checks = []  # (condition, code)
        sp_over = lambda start, count: (start + count) > g.sp_rows  # noqa: E731
        acc_over = lambda start, count: (start + count) > g.acc_rows  # noqa: E731
        is_gemm = opcode == Opcode.GEMM
        is_lut = opcode == Opcode.LUT_GEMM
        is_post = opcode == Opcode.POST
        if g.has_array:
            n = len(g.array_modes)
            modes = g.array_modes
            os = gemm.dataflow
            max_steps = Array(Const(g.max_steps(i), 16) for i in range(n))
            block_mode = Array(Const(int(bool(s.block))) for s in modes)[gemm.mode]
            nb = (gemm.k + 31) >> 5
            df_ok = {"both": Const(1), "os": os, "ws": ~os}[g.dataflow]
            # tiles (Geometry.gemm_tiles): row tiles output-stationary, weight tiles otherwise
            os_tiles = _divide(gemm.m + (g.rows - 1), g.rows, 17)
            ws_tiles = _divide(gemm.k, g.rows, 16)
            checks += [
                (is_gemm & ((gemm.m == 0) | (gemm.k == 0)), ErrorCode.ILLEGAL_FIELD),
                (is_gemm & (gemm.mode >= n), ErrorCode.ILLEGAL_FIELD),
                (is_gemm & ~df_ok, ErrorCode.ILLEGAL_FIELD),
                (is_gemm & os & (gemm.k > max_steps[gemm.mode]), ErrorCode.ILLEGAL_FIELD),
                (is_gemm & ~os & block_mode, ErrorCode.ILLEGAL_FIELD),
                (is_gemm & ~os & (ws_tiles * g.rows != gemm.k), ErrorCode.ILLEGAL_FIELD),
                (
                    is_gemm & os & sp_over(gemm.a_addr, os_tiles * gemm.k),
                    ErrorCode.SCRATCHPAD_RANGE,
                ),
                (is_gemm & sp_over(gemm.w_addr, gemm.k), ErrorCode.SCRATCHPAD_RANGE),
                (
                    is_gemm & os & block_mode & sp_over(gemm.scale_addr, (os_tiles + 1) * nb),
                    ErrorCode.SCRATCHPAD_RANGE,
                ),
                (
                    is_gemm & ~os & sp_over(gemm.a_addr, ws_tiles * gemm.m),
                    ErrorCode.SCRATCHPAD_RANGE,
                ),
                (is_gemm & acc_over(gemm.acc_addr, gemm.m), ErrorCode.ACCUMULATOR_RANGE),
            ]
        else:
            checks.append((is_gemm, ErrorCode.ILLEGAL_FIELD))
        if g.has_lut:
            planes_of = Array(Const(g.lut_planes(i), 3) for i in range(len(g.lut_modes)))
            max_groups = Array(Const(g.lut_max_groups(i), 16) for i in range(len(g.lut_modes)))
            checks += [
                (is_lut & ((lut.m == 0) | (lut.k == 0)), ErrorCode.ILLEGAL_FIELD),
                (is_lut & (lut.mode >= len(g.lut_modes)), ErrorCode.ILLEGAL_FIELD),
                (is_lut & (lut.m > g.lut_tile_m), ErrorCode.ILLEGAL_FIELD),
                (is_lut & (lut.k > max_groups[lut.mode]), ErrorCode.ILLEGAL_FIELD),
                (is_lut & sp_over(lut.a_addr, lut.k), ErrorCode.SCRATCHPAD_RANGE),
                (
                    is_lut & sp_over(lut.w_addr, lut.k * planes_of[lut.mode]),
                    ErrorCode.SCRATCHPAD_RANGE,
                ),
                (is_lut & acc_over(lut.acc_addr, lut.m), ErrorCode.ACCUMULATOR_RANGE),
            ]
        else:
            checks.append((is_lut, ErrorCode.ILLEGAL_FIELD))
        out_lo = Mux(post.out_signed, -128, 0)
        out_hi = Mux(post.out_signed, 127, 255)
        lo, hi = post.lo.as_signed(), post.hi.as_signed()
        checks += [
            (is_post & (post.rows == 0), ErrorCode.ILLEGAL_FIELD),
            (is_post & ((lo < out_lo) | (lo > hi) | (hi > out_hi)), ErrorCode.ILLEGAL_FIELD),
            (is_post & acc_over(post.acc_addr, post.rows), ErrorCode.ACCUMULATOR_RANGE),
            (is_post & acc_over(post.param_addr, 3), ErrorCode.ACCUMULATOR_RANGE),
            (is_post & sp_over(post.out_addr, post.rows), ErrorCode.SCRATCHPAD_RANGE),
            (
                is_post & post.residual & sp_over(post.res_addr, post.rows),
                ErrorCode.SCRATCHPAD_RANGE,
            ),
        ]
        m.d.comb += bad.eq(0)
        for cond, code in checks:
            self._error(checking & cond, code, insn_index)
            bad_next = Signal()
            m.d.comb += bad_next.eq(bad | cond)
            bad = bad_next

        # --- operand streams ---------------------------------------------------------------
        a_base, w_base, s_base, nb_sig = Signal(32), Signal(32), Signal(32), Signal(17)
        tiles = Signal(17)
        a_tile, w_tile, w_stride = Signal(20), Signal(20), Signal(16)
        w_reverse = Signal()
        mx_on = Signal()
        a_scale = w_scale = None
        if self._mx:
            a_scale = (mx_on, lambda t, b: s_base + t * nb_sig + b, 8 * g.rows)
            w_scale = (mx_on, lambda t, b: s_base + tiles * nb_sig + b, 8 * g.cols)
        a_start, a_fifo, a_drained = self._row_stream(
            m, "a", self.sp_a, a_base, tiles, a_tile, a_tile, Const(0), a_scale
        )
        w_start, w_fifo, w_drained = self._row_stream(
            m, "w", self.sp_w, w_base, tiles, w_tile, w_stride, w_reverse, w_scale
        )
        sp_bits = 8 * g.sp_row_bytes

        # --- results into the accumulator memory -------------------------------------------
        # Every GEMM or LUT_GEMM in flight has a result slot: ``cur`` takes the beats leaving
        # the block, ``nxt`` (a GEMM taken while ``cur`` still collects) follows it. Beats come
        # in tiles of ``tile_len``; weight-stationary tiles all go to the same rows (adding
        # after the first), the others to consecutive rows (kept below ``keep``).
        def result_slot(name):
            return SimpleNamespace(
                valid=Signal(name=f"{name}_valid"),
                base=Signal(32, name=f"{name}_base"),
                add=Signal(name=f"{name}_accumulate"),
                keep=Signal(33, name=f"{name}_keep"),
                tile_len=Signal(20, name=f"{name}_tile_len"),
                same=Signal(name=f"{name}_same_rows"),
                tiles=Signal(17, name=f"{name}_tiles"),
                array=Signal(name=f"{name}_from_array"),
                word=Signal(self.insn_bits, name=f"{name}_word"),
                index=Signal(32, name=f"{name}_index"),
            )

        fields = ("valid", "base", "add", "keep", "tile_len", "same", "tiles", "array")
        fields += ("word", "index")
        cur, nxt = result_slot("result"), result_slot("result_next")
        out_valid = Signal()
        out_data = Signal(data.ArrayLayout(signed(g.acc_elem_bits), g.acc_cols))
        out_invalid = Signal(g.acc_cols)
        out_pos, out_row, out_tiles = Signal(20), Signal(33), Signal(17)
        # accumulating saturates at the memory's element width (wider than any mode's)
        sat_lo = Const(-(1 << (g.acc_elem_bits - 1)), signed(g.acc_elem_bits + 1))
        sat_hi = Const((1 << (g.acc_elem_bits - 1)) - 1, signed(g.acc_elem_bits + 1))
        wb_valid, wb_keep, wb_add, wb_last = Signal(), Signal(), Signal(), Signal()
        wb_addr = Signal(32)
        wb_data = Signal.like(out_data)
        wb_invalid = Signal(g.acc_cols)
        wb_word, wb_index = Signal(self.insn_bits), Signal(32)
        fin, fin_word, fin_index = Signal(), Signal(self.insn_bits), Signal(32)
        beat = out_valid & cur.valid
        last_beat = beat & (out_pos == cur.tile_len - 1) & (out_tiles == cur.tiles - 1)
        read_addr = cur.base + Mux(cur.same, out_pos, out_row)
        m.d.comb += [
            self.acc_comp_r.addr.eq(read_addr),
            self.acc_comp_r.req.eq(beat),  # first in priority: always granted
        ]
        with m.If(beat):
            m.d.sync += out_row.eq(out_row + 1)
            with m.If(out_pos == cur.tile_len - 1):
                m.d.sync += [out_pos.eq(0), out_tiles.eq(out_tiles + 1)]
            with m.Else():
                m.d.sync += out_pos.eq(out_pos + 1)
        with m.If(last_beat):  # the next slot's beats follow at once
            m.d.sync += [getattr(cur, f).eq(getattr(nxt, f)) for f in fields]
            m.d.sync += [nxt.valid.eq(0), out_pos.eq(0), out_row.eq(0), out_tiles.eq(0)]
        m.d.sync += [
            wb_valid.eq(beat),
            wb_last.eq(last_beat),
            wb_addr.eq(read_addr),
            wb_keep.eq(cur.same | (out_row < cur.keep)),
            wb_add.eq(cur.add | (cur.same & (out_tiles != 0))),
            wb_data.eq(out_data),
            wb_invalid.eq(out_invalid),
            wb_word.eq(cur.word),
            wb_index.eq(cur.index),
            # the instruction ends (pushes) in the cycle after its last row's write
            fin.eq(wb_valid & wb_last),
            fin_word.eq(wb_word),
            fin_index.eq(wb_index),
        ]
        in_flight = cur.valid | nxt.valid | wb_valid | fin

        def open_slot(**values):
            """A new instruction's results: into ``cur`` when it is free (or frees now), else
            into ``nxt``."""
            values = {"valid": 1, **values}
            with m.If(cur.valid & ~last_beat):
                m.d.sync += [getattr(nxt, f).eq(v) for f, v in values.items()]
            with m.Else():
                m.d.sync += [getattr(cur, f).eq(v) for f, v in values.items()]
                m.d.sync += [out_pos.eq(0), out_row.eq(0), out_tiles.eq(0)]

        # a row read in the cycle it is written (a one-row tile after another) reads the
        # memory's old value: forward the written one
        read = data.View(self._acc_layout, self.acc_comp_r.data)
        written = Signal(self._acc_layout)
        forward = Signal()
        old = Signal(self._acc_layout)
        new = Signal(self._acc_layout)
        m.d.sync += [
            forward.eq(beat & self.acc_comp_w.req & (self.acc_comp_w.addr == read_addr)),
            written.eq(new),
        ]
        m.d.comb += old.eq(Mux(forward, written, read))
        sats = []
        # the block's columns: the array's or the LUT core's; the row's others keep their values
        widths = [w for w in (g.cols, g.lut_tile_n) if w]
        narrow = cur.array  # the results come from the array (else from the LUT core)
        for j in range(g.acc_cols):
            total = Signal(signed(g.acc_elem_bits + 2), name=f"acc_sum{j}")
            m.d.comb += total.eq(Mux(wb_add, old.data[j], 0) + wb_data[j])
            over, under = total > sat_hi, total < sat_lo
            keep = Const(0)
            if j >= min(widths):  # only one of the two blocks reaches this column
                keep = narrow if g.cols < g.lut_tile_n else ~narrow
                if j >= max(widths):
                    keep = Const(1)
            sats.append((over | under) & ~keep)
            m.d.comb += [
                new.data[j].eq(
                    Mux(keep, old.data[j], Mux(over, sat_hi, Mux(under, sat_lo, total)))
                ),
                new.invalid[j].eq(
                    Mux(keep, old.invalid[j], wb_invalid[j] | (wb_add & old.invalid[j]))
                ),
            ]
        write_result = wb_valid & wb_keep
        m.d.comb += [
            self.acc_comp_w.addr.eq(wb_addr),
            self.acc_comp_w.data.eq(new),
            self.acc_comp_w.req.eq(write_result),
        ]
        self._count("SATURATIONS", Mux(write_result, _popcount(Cat(*sats)), 0))

        # --- the systolic array ------------------------------------------------------------
        if g.has_array:
            from hw.array import SystolicArray

            array = SystolicArray(
                g.rows, g.cols, g.array_modes, g.dataflow, pipelined=bool(g.pe_stages)
            )
            m.submodules.array = array
            bus = g.bus
            a_entry, w_entry = a_fifo.r_data, w_fifo.r_data
            dataflow_reg = Signal()
            if g.dataflow == "both":
                m.d.comb += array.dataflow.eq(dataflow_reg)
            m.d.comb += [
                array.a.payload.data.eq(a_entry[: g.rows * bus.a_word_bits]),
                array.a.payload.last.eq(a_entry[-1]),
                array.w.payload.data.eq(w_entry[: g.cols * bus.w_word_bits]),
                array.w.payload.mode.eq(gemm.mode),
            ]
            if self._mx:
                m.d.comb += [
                    array.a.payload.scale.eq(a_entry[sp_bits : sp_bits + 8 * g.rows]),
                    array.w.payload.scale.eq(w_entry[sp_bits : sp_bits + 8 * g.cols]),
                ]
            self._array = array
        if g.has_lut:
            from hw.lut_core import LutCore, lut_modes

            core = LutCore.from_config(self._cfg)
            m.submodules.lut = core
            del lut_modes
            m.d.comb += [
                core.a.payload.data.eq(a_fifo.r_data[: 8 * g.lut_tile_m * g.lut_group]),
                core.a.payload.last.eq(a_fifo.r_data[-1]),
                core.w.payload.data.eq(w_fifo.r_data[: g.lut_tile_n * g.lut_group]),
                core.w.payload.mode.eq(lut.mode),
            ]

        # which block the streams and results belong to in this instruction
        use_array, use_lut = Signal(), Signal()
        if g.has_array:
            m.d.comb += [
                array.a.valid.eq(use_array & a_fifo.r_rdy),
                array.w.valid.eq(use_array & w_fifo.r_rdy),
            ]
        if g.has_lut:
            m.d.comb += [
                core.a.valid.eq(use_lut & a_fifo.r_rdy),
                core.w.valid.eq(use_lut & w_fifo.r_rdy),
            ]
        a_taken = Const(0)
        w_taken = Const(0)
        if g.has_array:
            a_taken = a_taken | (use_array & array.a.ready)
            w_taken = w_taken | (use_array & array.w.ready)
            with m.If(cur.array if g.has_lut else Const(1)):
                m.d.comb += [out_valid.eq(array.o.valid), out_invalid.eq(array.o.payload.invalid)]
                for j in range(g.cols):
                    m.d.comb += out_data[j].eq(array.o.payload.data[j])
        if g.has_lut:
            a_taken = a_taken | (use_lut & core.a.ready)
            w_taken = w_taken | (use_lut & core.w.ready)
            with m.If(~cur.array if g.has_array else Const(1)):
                m.d.comb += out_valid.eq(core.o.valid)
                for j in range(g.lut_tile_n):
                    m.d.comb += out_data[j].eq(core.o.payload.data[j])
        m.d.comb += [a_fifo.r_en.eq(a_taken & a_fifo.r_rdy), w_fifo.r_en.eq(w_taken & w_fifo.r_rdy)]

        # --- the post-processing unit ------------------------------------------------------
        pp = PostProcessor(g.acc_cols, g.acc_elem_bits)
        m.submodules.post = pp
        param_step = Signal(2)
        post_in = Signal(33)
        post_out = Signal(33)
        post_feed = Signal()
        post_valid = Signal()
        acc_post = data.View(self._acc_layout, self.acc_comp_r.data)
        params = pp.params
        n_lanes = g.acc_cols
        bias_reg = Signal(data.ArrayLayout(signed(32), n_lanes))
        b_reg = Signal(data.ArrayLayout(31, n_lanes))
        c_reg = Signal(data.ArrayLayout(6, n_lanes))
        m.d.comb += [
            params.bias.eq(bias_reg),
            params.b.eq(b_reg),
            params.c.eq(c_reg),
            params.zero_point.eq(post.zero_point),
            params.lo.eq(post.lo),
            params.hi.eq(post.hi),
            params.out_signed.eq(post.out_signed),
            params.residual.eq(post.residual),
            params.res_shift.eq(post.res_shift),
        ]
        m.d.sync += post_valid.eq(post_feed)
        m.d.comb += [
            pp.i.valid.eq(post_valid),
            pp.i.payload.acc.eq(acc_post.data),
            pp.i.payload.invalid.eq(acc_post.invalid),
            pp.i.payload.residual.eq(self.sp_a.data[: 8 * g.acc_cols]),
        ]
        m.d.comb += [
            self.sp_post_w.addr.eq(post.out_addr + post_out),
            self.sp_post_w.data.eq(pp.o.payload.data.as_value()),
            self.sp_post_w.req.eq(pp.o.valid),
        ]
        with m.If(pp.o.valid):
            m.d.sync += post_out.eq(post_out + 1)
            self._count("SATURATIONS", _popcount(pp.o.payload.saturated.as_value()))
            self._count("INVALID", _popcount(pp.o.payload.invalid.as_value()))

        # --- the instruction sequencer -----------------------------------------------------
        with m.FSM(name="compute"):
            with m.State("IDLE"):
                # a GEMM follows a GEMM whose rows the array has all taken while that one's
                # results still come (a result slot free); anything else waits for none
                head_gemm = word[:4] == Opcode.GEMM.value
                room = Mux(head_gemm, ~nxt.valid & (cur.array | ~cur.valid), ~in_flight)
                m.d.comb += take.eq(can_start & room)
                with m.If(can_start & room):
                    m.d.sync += [insn_word.eq(word), insn_index.eq(index)]
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += [checking.eq(1), busy.eq(1)]
                with m.If(bad):
                    m.next = "IDLE"
                with m.Elif(is_post):
                    m.d.sync += [param_step.eq(0), post_in.eq(0), post_out.eq(0)]
                    m.next = "POST_PARAMS"
                with m.Elif(is_gemm):
                    m.next = "GEMM_SETUP" if g.has_array else "IDLE"
                with m.Else():
                    m.next = "LUT_SETUP" if g.has_lut else "IDLE"
            if g.has_array:
                with m.State("GEMM_SETUP"):
                    m.d.comb += busy.eq(1)
                    # the array's dataflow may change only while it is idle
                    with m.If((dataflow_reg == gemm.dataflow) | ~array.busy):
                        ws = ~gemm.dataflow
                        m.d.sync += [
                            dataflow_reg.eq(gemm.dataflow),
                            a_base.eq(gemm.a_addr),
                            w_base.eq(gemm.w_addr),
                            s_base.eq(gemm.scale_addr),
                            nb_sig.eq(nb),
                            mx_on.eq(block_mode),
                            tiles.eq(Mux(ws, ws_tiles, os_tiles)),
                            a_tile.eq(Mux(ws, gemm.m, gemm.k)),
                            w_tile.eq(Mux(ws, g.rows, gemm.k)),
                            w_stride.eq(Mux(ws, g.rows, 0)),
                            w_reverse.eq(ws),
                        ]
                        open_slot(
                            base=gemm.acc_addr,
                            add=gemm.accumulate,
                            keep=gemm.m,
                            tile_len=Mux(ws, gemm.m, g.rows),
                            same=ws,
                            tiles=Mux(ws, ws_tiles, os_tiles),
                            array=1,
                            word=insn_word,
                            index=insn_index,
                        )
                        m.d.comb += [a_start.eq(1), w_start.eq(1)]
                        m.next = "GEMM_RUN"
                with m.State("GEMM_RUN"):
                    # fed: the next instruction may be taken while the results come
                    m.d.comb += [busy.eq(1), use_array.eq(1)]
                    with m.If(a_drained & w_drained):
                        m.next = "IDLE"
            if g.has_lut:
                with m.State("LUT_SETUP"):
                    m.d.comb += busy.eq(1)
                    m.d.sync += [
                        a_base.eq(lut.a_addr),
                        w_base.eq(lut.w_addr),
                        mx_on.eq(0),
                        tiles.eq(1),
                        a_tile.eq(lut.k),
                        w_tile.eq(lut.k * planes_of[lut.mode]),
                        w_stride.eq(0),
                        w_reverse.eq(0),
                    ]
                    open_slot(
                        base=lut.acc_addr,
                        add=lut.accumulate,
                        keep=lut.m,
                        tile_len=g.lut_tile_m,
                        same=0,
                        tiles=1,
                        array=0,
                        word=insn_word,
                        index=insn_index,
                    )
                    m.d.comb += [a_start.eq(1), w_start.eq(1)]
                    m.next = "LUT_RUN"
                with m.State("LUT_RUN"):
                    m.d.comb += [busy.eq(1), use_lut.eq(1)]
                    with m.If(a_drained & w_drained):
                        m.next = "IDLE"
            with m.State("POST_PARAMS"):
                # rows param_addr + 0, 1, 2 (bias, b, c): address now, data next cycle
                m.d.comb += [
                    busy.eq(1),
                    self.acc_comp_r.addr.eq(post.param_addr + param_step),
                    self.acc_comp_r.req.eq(1),
                ]
                with m.If(param_step != 0):
                    for j in range(g.acc_cols):
                        value = acc_post.data[j]
                        with m.Switch(param_step):
                            with m.Case(1):
                                m.d.sync += bias_reg[j].eq(value)
                            with m.Case(2):
                                m.d.sync += b_reg[j].eq(value)
                m.d.sync += param_step.eq(param_step + 1)
                with m.If(param_step == 3):
                    for j in range(g.acc_cols):
                        m.d.sync += c_reg[j].eq(acc_post.data[j])
                    m.next = "POST_RUN"
            with m.State("POST_RUN"):
                m.d.comb += [
                    busy.eq(1),
                    self.acc_comp_r.addr.eq(post.acc_addr + post_in),
                    self.acc_comp_r.req.eq(post_in != post.rows),
                    self.sp_a.addr.eq(post.res_addr + post_in),
                    self.sp_a.req.eq((post_in != post.rows) & post.residual),
                ]
                with m.If(post_in != post.rows):
                    m.d.comb += post_feed.eq(1)
                    m.d.sync += post_in.eq(post_in + 1)
                with m.If(post_out == post.rows):
                    m.d.comb += finish.eq(1)
                    m.next = "IDLE"

        # GEMM and LUT_GEMM end with their results (``fin``), POST in its state machine
        ended = Signal()
        ended_word, ended_index = Signal(self.insn_bits), Signal(32)
        m.d.comb += [
            ended.eq(finish | fin),
            ended_word.eq(Mux(fin, fin_word, insn_word)),
            ended_index.eq(Mux(fin, fin_index, insn_index)),
        ]
        self._push(ended, ended_word, ended_index, [("push_prev", CL), ("push_next", CS)])
        active = Signal()
        m.d.comb += active.eq(busy | in_flight)
        self._count("COMPUTE_BUSY", active)
        self._count("INSNS", ended)
        self.compute_busy = active
        self.compute_idle = ~active

    # --- run control, tokens, counters, registers -------------------------------------------

    def _run_control(self, m):
        regs = self._regs
        queues_empty = Cat(*(~q.r_rdy for q in self.queues.values())).all()
        units_idle = Signal()
        m.d.comb += units_idle.eq(self.load_idle & self.store_idle & self.compute_idle)
        fetch_stopped = Signal()
        m.d.comb += fetch_stopped.eq(self.fetch_halted | self.aborting)

        # tokens: pops and pushes of this cycle
        for ch in range(4):
            dec = Const(0, 2)
            for cond in self._tok_dec[ch]:
                dec = dec + cond
            inc = Const(0, 2)
            for cond, _ in self._tok_inc[ch]:
                inc = inc + cond
            # as wide as PROG_LEN: a run cannot push more tokens than it fetches instructions
            with m.If(self.start_run):
                m.d.sync += self.tokens[ch].eq(0)
            with m.Elif(self.running):
                m.d.sync += self.tokens[ch].eq(self.tokens[ch] - dec + inc)

        # deadlock: nothing executes, fetch cannot go on, some head waits for a token
        heads = [q.r_rdy for q in self.queues.values()]
        waiting = Cat(*heads).any()
        deadlock = (
            self.running
            & ~self.aborting
            & units_idle
            & (self.fetch_halted | self.fetch_blocked)
            & waiting
            & ~Cat(*self._can_start_sigs).any()
        )
        first_stuck = Const(0xFFFF_FFFF, 32)  # the smallest index at a waiting head
        for q in self.queues.values():
            head = q.r_data[self.insn_bits :]
            first_stuck = Mux(q.r_rdy & (head < first_stuck), head, first_stuck)
        self._error(deadlock, ErrorCode.TOKEN, first_stuck)
        leftover = Cat(*(t != 0 for t in self.tokens)).any()
        ending = Signal()
        m.d.comb += ending.eq(
            self.running & units_idle & queues_empty & fetch_stopped & ~self.fetch_active
        )
        self._error(ending & ~self.aborting & leftover, ErrorCode.TOKEN, self.halt_index)

        # the first error wins
        raised = Signal()
        code = Signal(8)
        index = Signal(32)
        chain = None
        for cond, c, idx in self._errors:
            ctx = m.If(cond) if chain is None else m.Elif(cond)
            with ctx:
                m.d.comb += [raised.eq(1), code.eq(c), index.eq(idx)]
            chain = True
        with m.If(self.start_run):
            m.d.sync += [
                self.running.eq(1),
                self.aborting.eq(0),
                self.err_code.eq(0),
                self.err_insn.eq(0),
            ]
        with m.Elif(raised & self.running & ~self.aborting):
            m.d.sync += [self.aborting.eq(1), self.err_code.eq(code), self.err_insn.eq(index)]
        run_done = Signal()
        m.d.comb += run_done.eq(ending & ~(raised & ~self.aborting))
        with m.If(run_done):
            m.d.sync += [self.running.eq(0), self.aborting.eq(0)]

        # counters: zeroed by START and CLEAR
        self._count("CYCLES", self.running)
        for name, sig in self.counters.items():
            total = sig
            for amount in self._incs[name]:
                total = total + amount
            with m.If(self.start_run | (regs.clear & ~self.running)):
                m.d.sync += sig.eq(0)
            with m.Elif(self.running):
                m.d.sync += sig.eq(total)
            m.d.comb += getattr(regs, name.lower()).eq(sig)
        m.d.comb += [
            regs.busy.eq(self.running),
            regs.run_done.eq(run_done),
            regs.error_code.eq(self.err_code),
            regs.error_insn.eq(self.err_insn),
        ]

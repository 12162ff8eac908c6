"""The DMA engines: burst splitting, the timing contract and the AXI rules in amaranth.sim
against a fixed-latency slave; then the generated Verilog on Icarus and Verilator (cocotb)
against cocotbext-axi's AxiRam, with random back-pressure and error responses."""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

import pytest
from amaranth.sim import Simulator

from hw.axi import Burst, Resp, axi4_read_signature, axi4_signature, check_data_bytes
from hw.dma import MAX_BEATS, Dma, ReadEngine, WriteEngine, split_bursts
from hw.dma_bench import run_dma_bench
from hw.generate import to_verilog

SEED = 20261123


def rng_for(*key) -> random.Random:
    seed = zlib.crc32(repr((SEED, *key)).encode())
    print(f"seed {seed} for {key}")
    return random.Random(seed)


def word(addr: int, data_bytes: int) -> int:
    """The memory of the amaranth.sim slave: a value that tells every beat address apart."""
    return (addr * 0x9E3779B97F4A7C15 + 0x1234567) % (1 << (8 * data_bytes))


def read_cycles(bursts: int, beats: int, latency: int) -> int:
    """The contract (hw.dma): a read's done cycle, counted from its acceptance."""
    return bursts * latency + beats + 1


def write_cycles(bursts: int, beats: int, b_latency: int) -> int:
    """The contract (hw.dma): a write's done cycle, counted from its acceptance (a write of
    0 beats waits for no response)."""
    return beats + bursts + b_latency + 1 if beats else 1


# ---- amaranth.sim: a fixed-latency slave and the clients, one cycle at a time ----------------


@dataclass
class Transfer:
    port: int
    addr: int
    beats: int
    start: int = 0  # first cycle the command is offered
    extra_rows: int = 0  # a read's rows after the first, each ``stride`` bytes further on
    stride: int = 0
    accepted: int | None = None
    done: int | None = None
    error: int | None = None
    data: list[int] = field(default_factory=list)


@dataclass
class Run:
    transfers: list[Transfer]
    bursts: list[tuple[int, int, int]]  # (cycle of the address handshake, byte address, beats)
    cycles: int


def _run(dut, bench, max_cycles):
    """Run ``bench(ctx, cycle)`` once per cycle until it returns True."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    ended = []

    async def testbench(ctx):
        for cycle in range(max_cycles):
            if bench(ctx, cycle):
                ended.append(cycle)
                return
            await ctx.tick()
        raise AssertionError(f"not finished after {max_cycles} cycles")

    sim.add_testbench(testbench)
    sim.run()
    return ended[0]


class _Clients:
    """Commands offered per port in order, each from its ``start`` cycle on."""

    def __init__(self, ports, transfers):
        self.ports, self.transfers = ports, transfers
        self.queues = [[t for t in transfers if t.port == p] for p in range(len(ports))]
        self.busy = [None] * len(ports)  # the transfer accepted and not yet done, per port

    def offer(self, ctx, cycle):
        for p, port in enumerate(self.ports):
            queue = self.queues[p]
            offer = bool(queue) and queue[0].start <= cycle
            ctx.set(port.cmd.valid, offer)
            if offer:
                t = queue[0]
                fields = {"addr": t.addr, "beats": t.beats}
                if t.extra_rows or t.stride:
                    fields |= {"extra_rows": t.extra_rows, "stride": t.stride}
                ctx.set(port.cmd.payload, fields)

    def observe(self, ctx, cycle):
        for p, port in enumerate(self.ports):
            if ctx.get(port.done):
                t = self.busy[p]
                assert t is not None, f"port {p}: done with no command in progress"
                t.done, t.error, self.busy[p] = cycle, ctx.get(port.error), None
            if ctx.get(port.cmd.valid) and ctx.get(port.cmd.ready):
                assert self.busy[p] is None, f"port {p} took a command while busy"
                t = self.queues[p].pop(0)
                t.accepted, self.busy[p] = cycle, t

    def finished(self):
        return all(t.done is not None for t in self.transfers)


def _check_stable(held, ctx, valid, fields, name):
    """AXI: once valid, a channel's fields stay put until the handshake."""
    now = [ctx.get(f) for f in fields]
    if held[name] is not None:
        assert ctx.get(valid), f"{name}: valid dropped before its handshake"
        assert now == held[name], f"{name}: fields changed while waiting: {held[name]} -> {now}"
    return now


def sim_read(
    engine: ReadEngine,
    transfers: list[Transfer],
    *,
    latency: int = 1,
    resp=lambda addr: Resp.OKAY,
    arready=lambda cycle: True,
    ready=lambda port, cycle: True,
    gap=lambda cycle: False,
    max_cycles: int = 20_000,
) -> Run:
    """Run reads against a slave that gives a burst's first beat ``latency`` cycles after its
    AR handshake and one beat per cycle after it (unless ``gap``), checking the data."""
    axi, db = engine.m_axi, engine.data_bytes
    clients = _Clients(engine.read, transfers)
    beats, bursts = [], []  # beats: [earliest cycle, address, last]
    held = {"ar": None}
    offered = [False]  # rvalid without a handshake: it must stay up

    def bench(ctx, cycle):
        if clients.finished():
            return True
        ctx.set(axi.arready, arready(cycle))
        head = None
        if beats and beats[0][0] <= cycle and (offered[0] or not gap(cycle)):
            head = beats[0]
        ctx.set(axi.rvalid, head is not None)
        if head is not None:
            ctx.set(axi.rdata, word(head[1], db))
            ctx.set(axi.rresp, resp(head[1]))
            ctx.set(axi.rlast, head[2])
        clients.offer(ctx, cycle)
        for p, port in enumerate(engine.read):
            ctx.set(port.data.ready, ready(p, cycle))
        fields = [axi.araddr, axi.arlen, axi.arsize, axi.arburst, axi.arid]
        if ctx.get(axi.arvalid):
            now = _check_stable(held, ctx, axi.arvalid, fields, "ar")
            assert now[2:] == [db.bit_length() - 1, Burst.INCR, 0], f"AR fields {now}"
            held["ar"] = None if ctx.get(axi.arready) else now
            if ctx.get(axi.arready):
                addr, n = now[0], now[1] + 1
                in_flight = len({b[3] for b in beats})
                assert in_flight < engine.bursts, f"{in_flight + 1} bursts in flight"
                assert addr // 4096 == (addr + n * db - 1) // 4096, (
                    f"AR {addr:#x} {n} crosses 4 KiB"
                )
                bursts.append((cycle, addr, n))
                k = len(bursts)
                beats.extend([cycle + latency + j, addr + j * db, j == n - 1, k] for j in range(n))
        else:
            assert held["ar"] is None, "arvalid dropped before its handshake"
        valid_seen = [ctx.get(port.data.valid) for port in engine.read]
        assert sum(valid_seen) <= 1, "two ports offered data at once"
        offered[0] = head is not None and not ctx.get(axi.rready)
        if head is not None and ctx.get(axi.rready):
            beats.pop(0)
            for p, port in enumerate(engine.read):
                if valid_seen[p]:
                    assert ctx.get(port.data.ready)
                    clients.busy[p].data.append(ctx.get(port.data.payload))
        clients.observe(ctx, cycle)
        return False

    cycles = _run(engine, bench, max_cycles)
    for t in transfers:
        expected = [
            word(t.addr - t.addr % db + r * (t.stride - t.stride % db) + j * db, db)
            for r in range(t.extra_rows + 1)
            for j in range(t.beats)
        ]
        assert t.data == expected, f"port {t.port}: the data of the read at {t.addr:#x}"
    return Run(transfers, bursts, cycles)


def sim_write(
    engine: WriteEngine,
    transfers: list[Transfer],
    *,
    b_latency: int = 1,
    resp=lambda addr: Resp.OKAY,
    awready=lambda cycle: True,
    wready=lambda cycle: True,
    valid=lambda cycle: True,
    max_cycles: int = 20_000,
) -> tuple[Run, dict[int, int]]:
    """Run writes against a slave that answers a burst's B ``b_latency`` cycles after its last
    W beat; the producer's beats are ``word(i)`` for the i-th beat of all transfers. Returns
    the run and the memory written (byte address of each beat -> value)."""
    axi, db = engine.m_axi, engine.data_bytes
    clients = _Clients([engine.write], transfers)
    bursts, open_bursts, responses, memory = [], [], [], {}
    held = {"aw": None, "w": None}
    sent = [0]  # beats taken from the producer
    offered = [False]  # data.valid without a handshake: it must stay up

    def bench(ctx, cycle):
        if clients.finished():
            return True
        ctx.set(axi.awready, awready(cycle))
        ctx.set(axi.wready, wready(cycle))
        head = responses[0] if responses and responses[0][0] <= cycle else None
        ctx.set(axi.bvalid, head is not None)
        if head is not None:
            ctx.set(axi.bresp, head[1])
        clients.offer(ctx, cycle)
        port = engine.write
        offered[0] = offered[0] or valid(cycle)
        ctx.set(port.data.valid, offered[0])
        ctx.set(port.data.payload, word(sent[0], db))
        fields = [axi.awaddr, axi.awlen, axi.awsize, axi.awburst, axi.awid]
        if ctx.get(axi.awvalid):
            now = _check_stable(held, ctx, axi.awvalid, fields, "aw")
            assert now[2:] == [db.bit_length() - 1, Burst.INCR, 0], f"AW fields {now}"
            held["aw"] = None if ctx.get(axi.awready) else now
            if ctx.get(axi.awready):
                addr, n = now[0], now[1] + 1
                assert addr // 4096 == (addr + n * db - 1) // 4096, (
                    f"AW {addr:#x} {n} crosses 4 KiB"
                )
                bursts.append((cycle, addr, n))
                open_bursts.append([now[0], now[1] + 1, 0])  # address, beats, beats seen
        else:
            assert held["aw"] is None, "awvalid dropped before its handshake"
        if ctx.get(axi.wvalid):
            now = _check_stable(held, ctx, axi.wvalid, [axi.wdata, axi.wlast, axi.wstrb], "w")
            held["w"] = None if ctx.get(axi.wready) else now
            if ctx.get(axi.wready):
                assert open_bursts, "a W beat before its burst's AW"
                burst = open_bursts[0]
                assert now[2] == (1 << db) - 1, "wstrb must be all ones"
                assert ctx.get(port.data.ready) and ctx.get(port.data.valid)
                memory[burst[0] + burst[2] * db] = now[0]
                offered[0] = False
                sent[0] += 1
                burst[2] += 1
                assert now[1] == (burst[2] == burst[1]), f"wlast on beat {burst[2]} of {burst[1]}"
                if burst[2] == burst[1]:
                    open_bursts.pop(0)
                    responses.append((cycle + b_latency, resp(burst[0])))
        else:
            assert held["w"] is None, "wvalid dropped before its handshake"
        assert ctx.get(axi.bready), "bready must always be high"
        if head is not None:
            responses.pop(0)
        clients.observe(ctx, cycle)
        return False

    cycles = _run(engine, bench, max_cycles)
    expected, index = {}, 0
    for t in transfers:  # in order: a later transfer overwrites an earlier one
        for j in range(t.beats):
            expected[t.addr - t.addr % db + j * db] = word(index, db)
            index += 1
    assert memory == expected
    return Run(transfers, bursts, cycles), memory


# ---- burst splitting ----------------------------------------------------------------------

SPLITS = [
    # (data_bytes, max_burst, addr, beats, expected bursts)
    (4, 256, 0x0FF0, 8, [(0x0FF0, 4), (0x1000, 4)]),  # across a 4 KiB boundary
    (4, 256, 0x0000, 600, [(0x0000, 256), (0x0400, 256), (0x0800, 88)]),  # 256-beat limit
    (4, 256, 0x1234, 1, [(0x1234, 1)]),  # one beat
    (4, 256, 0x0FFC, 1, [(0x0FFC, 1)]),  # the last word of a page
    (8, 256, 0x1F00, 600, [(0x1F00, 32), (0x2000, 256), (0x2800, 256), (0x3000, 56)]),
    (64, 256, 0x0FC0, 66, [(0x0FC0, 1), (0x1000, 64), (0x2000, 1)]),  # the page limits first
    (4, 16, 0x0FE0, 40, [(0x0FE0, 8), (0x1000, 16), (0x1040, 16)]),  # a smaller max_burst
    (4, 256, 0x1003, 2, [(0x1000, 2)]),  # the low address bits are ignored
]


@pytest.mark.parametrize(("data_bytes", "max_burst", "addr", "beats", "expected"), SPLITS)
def test_split_bursts_model(data_bytes, max_burst, addr, beats, expected):
    assert split_bursts(addr, beats, data_bytes, max_burst) == expected


@pytest.mark.parametrize(("data_bytes", "max_burst", "addr", "beats", "expected"), SPLITS)
def test_read_bursts(data_bytes, max_burst, addr, beats, expected):
    engine = ReadEngine(data_bytes, max_burst=max_burst, addr_width=16)
    run = sim_read(engine, [Transfer(0, addr, beats)])
    assert [(a, n) for _, a, n in run.bursts] == expected


@pytest.mark.parametrize(("data_bytes", "max_burst", "addr", "beats", "expected"), SPLITS)
def test_write_bursts(data_bytes, max_burst, addr, beats, expected):
    engine = WriteEngine(data_bytes, max_burst=max_burst, addr_width=16)
    run, _ = sim_write(engine, [Transfer(0, addr, beats)])
    assert [(a, n) for _, a, n in run.bursts] == expected


def test_split_bursts_random_against_the_rules():
    rng = rng_for("split")
    for _ in range(2000):
        db = 1 << rng.randrange(8)
        max_burst = rng.choice([1, 7, 16, 256])
        addr, beats = rng.randrange(0, 1 << 20, db), rng.randrange(0, 2000)
        bursts = split_bursts(addr, beats, db, max_burst)
        assert sum(n for _, n in bursts) == beats
        expect = addr
        for a, n in bursts:
            assert a == expect and 1 <= n <= max_burst
            assert a // 4096 == (a + n * db - 1) // 4096, "a burst crosses a 4 KiB boundary"
            expect += n * db
        # every burst but the last ends at the limit: as few bursts as the rules allow
        for a, n in bursts[:-1]:
            assert n == max_burst or (a + n * db) % 4096 == 0


# ---- the timing contract against fixed-latency slaves ---------------------------------------

TIMED = [(0x0FF0, 8), (0x0000, 600), (0x2344, 1), (0x0F00, 300), (0x0000, 0)]


@pytest.mark.parametrize("latency", [1, 2, 5])
def test_read_timing_formula(latency):
    """Back-to-back commands: each one's done on b*L + n + 1, the next accepted in that cycle."""
    engine = ReadEngine(4, addr_width=16)
    run = sim_read(engine, [Transfer(0, a, n) for a, n in TIMED], latency=latency)
    previous_done = 0
    for t in run.transfers:
        b = len(split_bursts(t.addr, t.beats, 4))
        assert t.done - t.accepted == read_cycles(b, t.beats, latency), (t.addr, t.beats)
        assert t.accepted == previous_done and t.error == 0
        previous_done = t.done
    # and the bursts' own cycles: a_1 = 1, a_(k+1) = a_k + L + len_k
    first = run.transfers[0]
    cycles = [c - first.accepted for c, _, _ in run.bursts[:2]]
    assert cycles == [1, 1 + latency + 4]


@pytest.mark.parametrize("b_latency", [1, 3])
def test_write_timing_formula(b_latency):
    engine = WriteEngine(4, addr_width=16)
    run, _ = sim_write(engine, [Transfer(0, a, n) for a, n in TIMED], b_latency=b_latency)
    previous_done = 0
    for t in run.transfers:
        b = len(split_bursts(t.addr, t.beats, 4))
        assert t.done - t.accepted == write_cycles(b, t.beats, b_latency), (t.addr, t.beats)
        assert t.accepted == previous_done and t.error == 0
        previous_done = t.done
    first = run.transfers[0]
    assert [c - first.accepted for c, _, _ in run.bursts[:2]] == [1, 1 + 4 + 1]


def test_read_with_stalls_keeps_the_data():
    """Random arready, beat gaps and consumer back-pressure: same data, same bursts."""
    rng = rng_for("read stalls")
    stall = {c: rng.random() < 0.4 for c in range(20_000)}
    engine = ReadEngine(8, addr_width=16)
    transfers = [Transfer(0, 0x0F80, 40), Transfer(0, 0x3000, 300)]
    run = sim_read(
        engine,
        transfers,
        latency=3,
        arready=lambda c: not stall[c],
        gap=lambda c: stall[c + 7],
        ready=lambda p, c: not stall[c + 13],
    )
    expected = split_bursts(0x0F80, 40, 8) + split_bursts(0x3000, 300, 8)
    assert [(a, n) for _, a, n in run.bursts] == expected


def test_write_with_stalls_keeps_the_data():
    rng = rng_for("write stalls")
    stall = {c: rng.random() < 0.4 for c in range(20_000)}
    engine = WriteEngine(8, addr_width=16)
    transfers = [Transfer(0, 0x0F80, 40), Transfer(0, 0x3000, 300)]
    run, memory = sim_write(
        engine,
        transfers,
        b_latency=4,
        awready=lambda c: not stall[c],
        wready=lambda c: not stall[c + 7],
        valid=lambda c: not stall[c + 13],
    )
    assert len(memory) == 340
    expected = split_bursts(0x0F80, 40, 8) + split_bursts(0x3000, 300, 8)
    assert [(a, n) for _, a, n in run.bursts] == expected


def test_read_priority_per_burst():
    """Port 0 wins every grant it competes for; port 1's long read lets it in between bursts."""
    engine = ReadEngine(4, addr_width=16, clients=2)
    transfers = [Transfer(1, 0x0000, 600), Transfer(0, 0x8000, 300, start=10)]
    run = sim_read(engine, transfers, latency=2)
    owners = [(a, n) for _, a, n in run.bursts]
    assert owners == [(0x0000, 256), (0x8000, 256), (0x8400, 44), (0x0400, 256), (0x0800, 88)]
    # both offered at once: port 0 first
    engine = ReadEngine(4, addr_width=16, clients=2)
    transfers = [Transfer(1, 0x0000, 10), Transfer(0, 0x8000, 10)]
    run = sim_read(engine, transfers, latency=2)
    assert [a for _, a, _ in run.bursts] == [0x8000, 0x0000]
    assert transfers[1].done < transfers[0].done


def contract_schedule(lengths: list[int], latency: int, in_flight: int):
    """The read contract's recurrence for one command's bursts (cycles from its acceptance):
    AR handshakes a_k and last beats e_k; ``done`` is e_b + 1."""
    ar, ends = [], []
    for k, n in enumerate(lengths):
        a = 1 if k == 0 else ar[-1] + 1
        if k >= in_flight:
            a = max(a, ends[k - in_flight] + 1)
        first = a + latency if k == 0 else max(a + latency, ends[-1] + 1)
        ar.append(a)
        ends.append(first + n - 1)
    return ar, ends


def bursts_of(t: Transfer, db: int, max_burst: int) -> list[tuple[int, int]]:
    return [
        burst
        for r in range(t.extra_rows + 1)
        for burst in split_bursts(t.addr + r * t.stride, t.beats, db, max_burst)
    ]


@pytest.mark.parametrize("in_flight", [1, 2, 3, 5])
@pytest.mark.parametrize("latency", [1, 4, 20])
def test_read_bursts_in_flight_timing(in_flight, latency):
    """Several bursts in flight: AR and done cycles follow the contract's recurrence, the
    bursts are those of the rows, and the data arrives row after row."""
    db = 4
    engine = ReadEngine(db, addr_width=16, max_burst=16, bursts=in_flight)
    transfers = [
        Transfer(0, 0x0FF0, 40),
        Transfer(0, 0x0100, 6, extra_rows=4, stride=0x0200),
        Transfer(0, 0x2000, 3, extra_rows=2, stride=0),
        Transfer(0, 0x3004, 1),
    ]
    run = sim_read(engine, transfers, latency=latency)
    handshakes = [c for c, _, _ in run.bursts]
    assert [(a, n) for _, a, n in run.bursts] == [
        b for t in transfers for b in bursts_of(t, db, 16)
    ]
    previous_done = 0
    for t in run.transfers:
        lengths = [n for _, n in bursts_of(t, db, 16)]
        ar, ends = contract_schedule(lengths, latency, in_flight)
        mine, handshakes = handshakes[: len(lengths)], handshakes[len(lengths) :]
        assert [c - t.accepted for c in mine] == ar, (t.addr, t.beats, t.extra_rows)
        assert t.done - t.accepted == ends[-1] + 1
        assert t.accepted == previous_done and t.error == 0
        previous_done = t.done
    # enough bursts in flight hide the latency: one beat per cycle after the first
    if (in_flight - 1) * 16 >= latency:
        first = run.transfers[0]
        assert first.done - first.accepted == latency + first.beats + 1


def test_read_bursts_in_flight_with_stalls_and_two_ports():
    """Random arready, beat gaps and back-pressure with three bursts in flight from two ports:
    every beat reaches its own port in order, and the bursts are the rows' in grant order."""
    rng = rng_for("read in flight")
    stall = {c: rng.random() < 0.35 for c in range(30_000)}
    engine = ReadEngine(8, addr_width=16, max_burst=8, clients=2, bursts=3)
    transfers = [
        Transfer(1, 0x0000, 30),
        Transfer(0, 0x4F00, 5, extra_rows=6, stride=0x48, start=3),
        Transfer(1, 0x2000, 7, extra_rows=3, stride=0x100),
        Transfer(0, 0x6000, 1, extra_rows=9, stride=8),
    ]
    run = sim_read(
        engine,
        transfers,
        latency=5,
        arready=lambda c: not stall[c],
        gap=lambda c: stall[c + 7],
        ready=lambda p, c: not stall[c + 13 + 5 * p],
    )
    expected = {b for t in transfers for b in bursts_of(t, 8, 8)}
    assert sorted((a, n) for _, a, n in run.bursts) == sorted(expected)


@pytest.mark.parametrize("bad", [Resp.SLVERR, Resp.DECERR, Resp.EXOKAY])
def test_read_error_response(bad):
    """One bad beat in the second burst: all the data still comes, error with done, and the
    next command starts clean."""
    engine = ReadEngine(4, addr_width=16)
    transfers = [Transfer(0, 0x0FF0, 12), Transfer(0, 0x0100, 4)]
    run = sim_read(engine, transfers, resp=lambda a: bad if a == 0x1004 else Resp.OKAY)
    assert [t.error for t in run.transfers] == [1, 0]


@pytest.mark.parametrize("bad", [Resp.SLVERR, Resp.DECERR])
def test_write_error_response(bad):
    engine = WriteEngine(4, addr_width=16)
    transfers = [Transfer(0, 0x0FF0, 12), Transfer(0, 0x0100, 4)]
    run, _ = sim_write(engine, transfers, resp=lambda a: bad if a == 0x0FF0 else Resp.OKAY)
    assert [t.error for t in run.transfers] == [1, 0]


def test_dma_top_joins_both_engines():
    """The top's m_axi carries both halves; the cocotb runs check it end to end."""
    dma = Dma(4, read_clients=2)
    names = set(axi4_signature(32, 4).members)
    assert set(dma.m_axi.signature.members) == names
    assert len(dma.read) == 2
    assert "m_axi__araddr" in to_verilog(dma, "dma")


# ---- parameter validation: one test per message ---------------------------------------------


@pytest.mark.parametrize("bad", [0, 3, 256, 2.0, "4"])
def test_data_bytes_validation(bad):
    with pytest.raises(ValueError, match=r"data_bytes must be a power of two in 1\.\.128, not "):
        ReadEngine(bad)
    with pytest.raises(ValueError, match=r"data_bytes must be a power of two in 1\.\.128"):
        check_data_bytes(bad)


@pytest.mark.parametrize("bad", [11, 65, None])
def test_addr_width_validation(bad):
    with pytest.raises(ValueError, match=rf"addr_width must be an integer in 12\.\.64, not {bad}"):
        WriteEngine(4, addr_width=bad)


@pytest.mark.parametrize("bad", [0, 257, 16.0])
def test_max_burst_validation(bad):
    with pytest.raises(ValueError, match=rf"max_burst must be an integer in 1\.\.256, not {bad}"):
        Dma(4, max_burst=bad)


def test_clients_validation():
    with pytest.raises(ValueError, match=r"clients must be a positive integer, not 0"):
        ReadEngine(4, clients=0)


def test_read_bursts_validation():
    with pytest.raises(ValueError, match=r"read_bursts must be an integer in 1\.\.64, not 0"):
        Dma(4, read_bursts=0)


def test_read_clients_validation():
    with pytest.raises(ValueError, match=r"read_clients must be a positive integer, not 0"):
        Dma(4, read_clients=0)


def test_axi_addr_width_validation():
    with pytest.raises(ValueError, match=r"addr_width must be an integer in 1\.\.64, not 0"):
        axi4_signature(0, 4)


def test_axi_id_width_validation():
    with pytest.raises(ValueError, match=r"id_width must be an integer in 1\.\.32, not 0"):
        axi4_read_signature(32, 4, id_width=0)


# ---- the generated Verilog under cocotb, against cocotbext-axi --------------------------------

# cocotbext-axi's AxiRam, measured (the contract's L and L_B for it): the first R beat two
# cycles after the AR handshake, the B two cycles after the last W beat, and arready, wready
# and awready always high when no pause generator runs.
AXIRAM_READ_LATENCY = 2
AXIRAM_B_LATENCY = 2


def random_job(rng, op, db, lo, hi, port=0, long_beats=700) -> dict:
    """A transfer inside [lo, hi): short, medium, across a 4 KiB boundary or longer than 256
    beats."""
    kind = rng.choice(["short", "medium", "page", "long"])
    beats = {
        "short": rng.randint(1, 4),
        "medium": rng.randint(5, 200),
        "page": rng.randint(2, 80),
        "long": rng.randint(257, long_beats),
    }[kind]
    beats = min(beats, (hi - lo) // db)
    if kind == "page":  # start a few beats before a page boundary
        page = rng.randrange(lo // 4096 + 1, hi // 4096)
        addr = max(lo, page * 4096 - rng.randint(1, beats - 1) * db)
    else:
        addr = rng.randrange(lo, hi - beats * db + 1, db)
    addr = min(addr, hi - beats * db)
    job = {"op": op, "addr": addr, "beats": beats}
    if op == "read":
        job["port"] = port
    return job


def random_spec(
    seed,
    *,
    data_bytes,
    read_clients=2,
    mem_size=1 << 16,
    sequential=8,
    lane=3,
    pause=0.0,
    long_beats=700,
) -> dict:
    """Sequential reads and writes anywhere; then one lane per read port (reads in the lower
    half) and one of writes (upper half), all at once."""
    rng = rng_for("spec", seed)
    db, half = data_bytes, mem_size // 2
    seq = []
    for i in range(sequential):
        op = "read" if i % 2 else "write"
        seq.append(random_job(rng, op, db, 0, mem_size, i // 2 % read_clients, long_beats))
    lanes = [
        [random_job(rng, "read", db, 0, half, p, long_beats) for _ in range(lane)]
        for p in range(read_clients)
    ]
    lanes.append([random_job(rng, "write", db, half, mem_size, 0, long_beats) for _ in range(lane)])
    return {
        "seed": rng.getrandbits(32),
        "data_bytes": db,
        "addr_width": 32,
        "read_clients": read_clients,
        "memory": "ram",
        "mem_size": mem_size,
        "pause": pause,
        "sequential": seq,
        "lanes": lanes,
    }


def run_bench(tmp_path, spec, simulator="icarus") -> dict:
    dma = Dma(
        spec["data_bytes"],
        addr_width=spec["addr_width"],
        read_clients=spec["read_clients"],
        read_bursts=spec.get("read_bursts", 1),
    )
    verilog = tmp_path / "dma.v"
    verilog.write_text(to_verilog(dma, "dma"))
    return run_dma_bench(verilog, "dma", spec, simulator=simulator, build_dir=tmp_path / simulator)


def check_contract(spec, results):
    """Splitting and timing of every sequential job against AxiRam (no pauses)."""
    db = spec["data_bytes"]
    for job, result in zip(spec["sequential"], results["sequential"], strict=True):
        bursts = split_bursts(job["addr"], job["beats"], db)
        assert [tuple(b) for b in result["bursts"]] == bursts, job
        n, b = job["beats"], len(bursts)
        if job["op"] == "read":
            expected = read_cycles(b, n, AXIRAM_READ_LATENCY)
        else:
            expected = write_cycles(b, n, AXIRAM_B_LATENCY)
        assert result["done"] - result["accepted"] == expected, job
        assert result["error"] == 0


def test_icarus_random_transfers(tmp_path):
    spec = random_spec("icarus", data_bytes=4, sequential=60, lane=12)
    results = run_bench(tmp_path, spec)
    check_contract(spec, results)
    assert all(r["error"] == 0 for lane in results["lanes"] for r in lane)


def test_icarus_longest_transfers(tmp_path):
    """65535 one-byte beats (the 16-bit counters full), 256 bursts each way, on time."""
    spec = random_spec("longest", data_bytes=1, read_clients=1, sequential=0, lane=0)
    spec["sequential"] = [
        {"op": "write", "addr": 0, "beats": MAX_BEATS},
        {"op": "read", "port": 0, "addr": 1, "beats": MAX_BEATS},
    ]
    check_contract(spec, run_bench(tmp_path, spec))


def test_icarus_random_back_pressure(tmp_path):
    """Pauses on every AXI channel, consumers and producer idle at random: same data."""
    spec = random_spec("pause", data_bytes=4, sequential=30, lane=8, pause=0.4)
    results = run_bench(tmp_path, spec)
    for job, result in zip(spec["sequential"], results["sequential"], strict=True):
        assert [tuple(b) for b in result["bursts"]] == split_bursts(job["addr"], job["beats"], 4)


def test_icarus_wide_beats(tmp_path):
    """64-byte beats: the 4 KiB boundary (64 beats) splits before the 256-beat limit."""
    spec = random_spec(
        "wide",
        data_bytes=64,
        read_clients=1,
        mem_size=1 << 17,
        sequential=16,
        lane=4,
        long_beats=300,
    )
    check_contract(spec, run_bench(tmp_path, spec))


def test_icarus_bursts_in_flight(tmp_path):
    """Four read bursts in flight against AxiRam, two-dimensional reads among them, with and
    without pauses on every channel: the data bit-exact, the bursts those of the rows, and a
    read of many bursts done sooner than one burst at a time allows."""
    rng = rng_for("icarus in flight")
    spec = random_spec("in flight", data_bytes=8, sequential=0, lane=6, pause=0.3)
    spec["read_bursts"] = 4
    sequential = []
    for i in range(10):
        beats, rows = rng.randint(1, 300), rng.randint(0, 5)
        stride = rng.randrange(0, 0x800, 8)
        addr = rng.randrange(0, 0x8000 - (rows * stride + beats * 8), 8)
        sequential.append(
            {
                "op": "read",
                "port": i % 2,
                "addr": addr,
                "beats": beats,
                "extra_rows": rows,
                "stride": stride,
            }
        )
    for lane in spec["lanes"][:2]:
        lane[0] |= {"extra_rows": 3, "stride": 0x208}
    spec["sequential"] = sequential
    for pause in (0.0, 0.3):
        spec["pause"] = pause
        (tmp_path / str(pause)).mkdir()
        results = run_bench(tmp_path / str(pause), spec)
        for job, result in zip(sequential, results["sequential"], strict=True):
            t = Transfer(
                0, job["addr"], job["beats"], extra_rows=job["extra_rows"], stride=job["stride"]
            )
            bursts = bursts_of(t, 8, 256)
            assert [tuple(b) for b in result["bursts"]] == bursts, job
            if pause == 0.0 and len(bursts) > 1:
                one_at_a_time = read_cycles(len(bursts), t.beats * (t.extra_rows + 1), 2)
                assert result["done"] - result["accepted"] < one_at_a_time, job


def test_icarus_error_responses(tmp_path):
    """An AxiSlave with only 16 KiB mapped answers SLVERR beyond it: reads still deliver every
    beat (zeros there), writes finish, both with error; the next transfer is clean."""

    def read(addr, beats, port=0):
        return {"op": "read", "port": port, "addr": addr, "beats": beats}

    def write(addr, beats):
        return {"op": "write", "addr": addr, "beats": beats}

    sequential = [
        read(0x3F00, 128),  # across the end of the mapped memory: error
        read(0x0100, 16),  # clean again
        read(0x8000, 300),  # all beyond: error, zeros
        write(0x3FF0, 8),  # half beyond: error, the first half written
        write(0x0200, 8),
        write(0x9000, 3),
        read(0x3FF0, 4),
    ]
    spec = {
        "seed": 7,
        "data_bytes": 4,
        "addr_width": 16,
        "read_clients": 2,
        "memory": "mapped",
        "mem_size": 1 << 14,
        "pause": 0.0,
        "sequential": sequential,
        "lanes": [[read(0x3FF8, 4, 1)], [write(0x1000, 40), write(0x7000, 2)]],
    }
    results = run_bench(tmp_path, spec)
    assert [r["error"] for r in results["sequential"]] == [1, 0, 1, 1, 0, 1, 0]
    assert [[r["error"] for r in lane] for lane in results["lanes"]] == [[1], [0, 1]]


def test_the_bench_can_fail(tmp_path):
    """A byte flipped in the RAM behind the model's back is reported with its beat."""
    spec = random_spec("tamper", data_bytes=4, sequential=2, lane=0)
    read = spec["sequential"][1]
    spec["sequential"] = [read]
    spec["tamper"] = read["addr"] + 4 * (read["beats"] - 1) + 2  # the last beat's third byte
    with pytest.raises(AssertionError, match=rf"beat {read['beats'] - 1} is 0x[0-9a-f]+, expected"):
        run_bench(tmp_path, spec)


def test_verilator_random_transfers(tmp_path):
    spec = random_spec("verilator", data_bytes=8, sequential=8, lane=3, pause=0.2)
    run_bench(tmp_path, spec, simulator="verilator")

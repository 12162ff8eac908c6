"""The banked memory in amaranth.sim: bank mapping, fixed priority, read data a cycle after the
grant, writes at the end of the granted cycle, against a dictionary model of the rows."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from hw.banked import BankedMemory


@pytest.mark.parametrize("banks", [1, 2, 4])
def test_random_traffic_matches_a_model(banks):
    depth, readers, writers = 37, 3, 2  # a depth that is not a multiple of the banks
    mem = BankedMemory(16, depth, banks=banks, readers=readers, writers=writers)
    rng = random.Random(banks)
    model = {}
    checked = [0]

    async def bench(ctx):
        expect = [None] * readers  # what each reader granted last cycle must see
        for _ in range(400):
            reqs = []
            for r in mem.read:
                addr, req = rng.randrange(depth), rng.random() < 0.7
                ctx.set(r.addr, addr)
                ctx.set(r.req, req)
                reqs.append((addr, req))
            wreqs = []
            for w in mem.write:
                addr, req, value = rng.randrange(depth), rng.random() < 0.5, rng.getrandbits(16)
                ctx.set(w.addr, addr)
                ctx.set(w.req, req)
                ctx.set(w.data, value)
                wreqs.append((addr, req, value))
            # last cycle's grants: their data is on the ports now
            for i, r in enumerate(mem.read):
                if expect[i] is not None:
                    assert ctx.get(r.data) == expect[i], f"reader {i}"
                    checked[0] += 1
            # the grants of this cycle: per bank, the first requester wins
            taken_r, taken_w = set(), set()
            for i, r in enumerate(mem.read):
                addr, req = reqs[i]
                want = req and addr % banks not in taken_r
                assert ctx.get(r.grant) == want, f"reader {i} grant"
                if req:
                    taken_r.add(addr % banks)
                # the row as it is before this cycle's writes
                expect[i] = model.get(addr, 0) if want else None
            granted = []
            for i, w in enumerate(mem.write):
                addr, req, value = wreqs[i]
                want = req and addr % banks not in taken_w
                assert ctx.get(w.grant) == want, f"writer {i} grant"
                if req:
                    taken_w.add(addr % banks)
                if want:
                    granted.append((addr, value))
            await ctx.tick()
            for addr, value in granted:  # visible from the next cycle (reads see old rows)
                model[addr] = value

    sim = Simulator(mem)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert checked[0] > 300


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(banks=3), "banks must be a power of two, not 3"),
        (dict(depth=0), "depth must be a positive integer, not 0"),
    ],
)
def test_rejects_bad_parameters(kwargs, message):
    args = dict(banks=2, depth=8) | kwargs
    with pytest.raises(ValueError, match=message):
        BankedMemory(8, args.pop("depth"), readers=1, writers=1, **args)

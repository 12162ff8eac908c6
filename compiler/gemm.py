"""The GEMM lowering: Y = epilogue(A @ W) for any M x K x N, on the systolic array or the LUT
core, tiled to the scratchpad with double buffering -> a Program.

**Tiles.** The output is cut into tiles of ``tile_m`` x ``tile_n`` (the array: rows x cols
output-stationary, or up to ``tile_m`` rows of A x cols weight-stationary; the LUT core: its
tile_m x tile_n). K is cut into *chunks*: the k steps one buffer holds (output-stationary and
the LUT core: as many as fit, float modes at most ``array.max_k``, MX modes whole blocks;
weight-stationary: one rows*lanes weight tile). Chunks run in order tile by tile; the first
chunk of a tile overwrites the tile's accumulators, the rest accumulate.

**Buffers and tokens** (``qaccel.isa``). Two scratchpad buffers alternate between chunks:
the load unit fills buffer c % 2 and pushes a load->compute token; GEMM pops it; the buffer is
handed back (compute->load) by the chunk's GEMM, or, for a tile's last chunk, by the instruction
that finishes the tile (POST, or the last GEMM without an epilogue), so the parameters and the
residual loaded with a tile's first chunk stay until the tile is done. Results alternate between
two output buffers with compute->store and store->compute tokens in the same way. Every channel
balances: nothing is left at HALT.

**Tensors in DRAM.** ``x`` (M x K codes; blocked as the unit reads it), ``residual`` (M x N
8-bit codes, when asked for), ``y`` (M x N: 8-bit codes with an epilogue, raw accumulator
values without); weights, scales and epilogue parameters are constants of the Program. The
input regions are zero-filled segments of the DRAM image too: the padding around ``x`` (K to
whole words, M to whole tiles) must read as zero, since a binary weight code 0 is -1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qaccel import config as qconfig
from qaccel import formats
from qaccel.isa import AccElement, Geometry
from qaccel.modes import pack_lanes
from qaccel.program import Program, ProgramBuilder, ProgramError, TensorSpec

__all__ = ["Epilogue", "GemmPlan", "lower_gemm"]

C_MAX = 63  # the post-processing unit's widest shift


@dataclass(frozen=True)
class Epilogue:
    """bias + per-channel dyadic requantization (b / 2**c) + zero point + clamp [lo, hi] ->
    8-bit codes (``sim.post_model``). ``b``, ``c`` and ``bias`` are per output column (length
    N) or scalars; a residual input adds ``residual << res_shift`` before requantization."""

    b: object = 1
    c: object = 0
    bias: object = 0
    zero_point: int = 0
    lo: int = -128
    hi: int = 127
    out_signed: bool = True
    residual: bool = False
    res_shift: int = 0

    @classmethod
    def requant(cls, multiplier, *, relu: bool = False, zero_point: int = 0, **kw) -> Epilogue:
        """From real multipliers (scalar or per channel): ``formats.dyadic`` each, shifts
        above 63 folded into b."""
        bs, cs = [], []
        for m in np.atleast_1d(np.asarray(multiplier, dtype=float)):
            b, c = formats.dyadic(float(m))
            if c > C_MAX:
                b, c = int(formats.round_shift(np.array([b]), np.array([c - C_MAX]))[0]), C_MAX
            bs.append(b)
            cs.append(c)
        out_signed = kw.pop("out_signed", True)
        lo_fmt, hi_fmt = (-128, 127) if out_signed else (0, 255)
        return cls(
            b=np.array(bs),
            c=np.array(cs),
            zero_point=zero_point,
            lo=max(lo_fmt, zero_point) if relu else lo_fmt,
            hi=hi_fmt,
            out_signed=out_signed,
            **kw,
        )


@dataclass(frozen=True)
class GemmPlan:
    """How a GEMM was cut: the unit, the mode, tile and chunk sizes, instruction count."""

    unit: str
    mode: str
    dataflow: str
    tile_m: int
    tile_n: int
    chunk_steps: int
    tiles: int
    chunks: int


def _block(sram_addr, dram_addr, rows: int) -> dict:
    """A LOAD/STORE of ``rows`` consecutive scratchpad rows from consecutive DRAM."""
    return dict(
        mem=0, sram_addr=sram_addr, dram_addr=dram_addr, dram_stride=0, y_size=1, x_size=rows
    )


def _split(total: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(size, total - s)) for s in range(0, total, size)]


def lower_gemm(
    config: qconfig.AcceleratorConfig,
    weights,
    *,
    m: int,
    mode: str,
    unit: str | None = None,
    dataflow: str | None = None,
    epilogue: Epilogue | None = None,
    w_scales=None,
    max_chunk: int | None = None,
    acc_out: str = "native",
    name: str = "gemm",
) -> Program:
    """A Program computing Y = epilogue(X @ W) for X (``m`` x K input codes, tensor ``x``) and
    the constant ``weights`` (K x N codes of the mode's weight format).

    ``mode``: ``"weight*activation"`` (a configured array mode, or a LUT weight format with
    the LUT core's activation). ``unit``: ``"array"`` or ``"lut"`` (default: the one that has
    the mode; the LUT core when both do). MX modes take ``w_scales`` (ceil(K/32) x N E8M0
    codes) and the input ``x_scales`` (M x ceil(K/32)). Raises ProgramError when the GEMM
    cannot be tiled onto the configuration. ``max_chunk`` caps the steps (groups) of one
    chunk, for tests that want many dependent instructions. Without an epilogue, ``y`` holds
    the accumulators: ``acc_out`` "native" (exact, ``acc_elem_bytes`` each) or "int32"
    (saturated, counted)."""
    g = Geometry.of(config)
    weights = np.asarray(weights, dtype=np.int64)
    if weights.ndim != 2 or weights.size == 0:
        raise ProgramError(f"weights must be a non-empty K x N matrix, not shape {weights.shape}")
    if not isinstance(m, int) or m < 1:
        raise ProgramError(f"m must be a positive integer, not {m!r}")
    w_name, _, a_name = mode.partition("*")
    unit = unit or _pick_unit(config, g, w_name, a_name)
    _check_codes(w_name, weights)
    outs = {"native": AccElement.NATIVE, "int32": AccElement.INT32}
    if acc_out not in outs:
        raise ProgramError(f"acc_out must be 'native' or 'int32', not {acc_out!r}")
    builder = ProgramBuilder(config)
    elem = outs[acc_out]
    if unit == "lut":
        plan = _lower_lut(builder, g, weights, m, w_name, a_name, epilogue, max_chunk, elem)
    elif unit == "array":
        plan = _lower_array(
            builder,
            g,
            config,
            weights,
            m,
            w_name,
            a_name,
            dataflow,
            epilogue,
            w_scales,
            max_chunk,
            elem,
        )
    else:
        raise ProgramError(f"unit must be 'array' or 'lut', not {unit!r}")
    builder.notes = {
        "gemm": {
            "name": name,
            "m": m,
            "k": weights.shape[0],
            "n": weights.shape[1],
            **plan.__dict__,
        }
    }
    return builder.build()


def _check_codes(name: str, codes) -> None:
    """Weights are codes of their format (ternary code 2 is not one); integer formats also
    take their signed values (the same bits)."""
    fmt = formats.MX_FORMATS[name].element if name in formats.MX_FORMATS else None
    fmt = fmt or formats.get_format(name)
    codes = np.asarray(codes)
    if fmt.kind == "int":
        low = min(fmt.int_min, 0)
        if codes.size and (codes.min() < low or codes.max() >= 1 << fmt.bits):
            raise ProgramError(
                f"weights: {fmt.name} takes values {low}..{(1 << fmt.bits) - 1} "
                "(signed values or codes)"
            )
        return
    try:
        fmt.decode(codes)
    except ValueError as e:
        raise ProgramError(f"weights: {e}") from None


def _pick_unit(config, g: Geometry, w_name: str, a_name: str) -> str:
    if g.has_lut and w_name in g.lut_modes and a_name == g.lut_activation:
        return "lut"
    if g.has_array and any(str(p) == f"{w_name}*{a_name}" for p in config.array.modes):
        return "array"
    have = [str(p) for p in config.array.modes] if config.array else []
    if g.has_lut:
        have += [f"{w}*{g.lut_activation}" for w in g.lut_modes]
    raise ProgramError(
        f"configuration {config.name!r} has no unit for {w_name}*{a_name} "
        f"(it has {', '.join(have)})"
    )


# --- the schedule shared by both units -----------------------------------------------------


class _Schedule:
    """Emits the double-buffered chunk/tile pattern with balanced tokens (module docstring)."""

    def __init__(self, builder: ProgramBuilder, chunks_per_tile: list[int], raw_out: bool):
        self.b = builder
        self.total_chunks = sum(chunks_per_tile)
        self.tiles = len(chunks_per_tile)
        self.raw_out = raw_out
        self.chunk = 0

    def load_chunk(self, loads: list[dict]) -> None:
        """The loads of the next chunk: the first pops a free buffer, the last pushes data."""
        c = self.chunk
        for i, kw in enumerate(loads):
            self.b.load(
                **kw,
                pop_next=(i == 0 and c >= 2),
                push_next=(i == len(loads) - 1),
            )

    def compute_chunk(
        self, gemms: list[tuple], *, first_of_tile: bool, last_of_tile: bool, tile: int
    ):
        """The chunk's GEMMs: the first pops the data token; the buffer goes back with the last
        one unless the tile's finisher will hand it back."""
        c = self.chunk
        for i, (emit, kw) in enumerate(gemms):
            last = i == len(gemms) - 1
            pops_store = self.raw_out and first_of_tile and i == 0 and tile >= 2
            frees = last and not last_of_tile and c + 2 < self.total_chunks
            finishes = self.raw_out and last and last_of_tile
            emit(
                **kw,
                pop_prev=(i == 0),
                pop_next=pops_store,
                push_prev=frees or (finishes and c + 2 < self.total_chunks),
                push_next=finishes,
            )
        self.chunk += 1

    def post(self, tile: int, **kw) -> None:
        """The tile's POST: waits for its output buffer, frees the last chunk's buffer."""
        c = self.chunk - 1
        self.b.post(
            **kw,
            pop_next=tile >= 2,
            push_prev=c + 2 < self.total_chunks,
            push_next=True,
        )

    def store(self, tile: int, **kw) -> None:
        self.b.store(**kw, pop_prev=True, push_prev=tile + 2 < self.tiles)


def _epilogue_params(g: Geometry, ep: Epilogue, n0: int, width: int) -> bytes:
    """Three accumulator rows (bias, b, c) for output columns n0 .. n0 + width, as INT32."""
    rows = []
    for value in (ep.bias, ep.b, ep.c):
        full = np.atleast_1d(np.asarray(value, dtype=np.int64))
        row = np.zeros(g.acc_cols, dtype=np.int64)
        row[:width] = full[n0 : n0 + width] if full.size > 1 else full[0]
        data = row.astype("<i4").tobytes()
        rows.append(data + bytes(g.acc_dram_row_bytes(AccElement.INT32) - len(data)))
    return b"".join(rows)


def _check_epilogue(ep: Epilogue, n: int) -> None:
    for name in ("b", "c", "bias"):
        v = np.atleast_1d(np.asarray(getattr(ep, name)))
        if v.size not in (1, n):
            raise ProgramError(f"epilogue {name} has {v.size} values; N = {n}")
    if np.any(np.asarray(ep.c) > C_MAX) or np.any(np.asarray(ep.c) < 0):
        raise ProgramError(f"epilogue shifts must be in 0..{C_MAX}")


class _Memory:
    """Scratchpad and accumulator rows handed out in order; running out is a ProgramError."""

    def __init__(self, g: Geometry, banks: int = 1):
        self.g, self.sp, self.acc, self.banks = g, 0, 0, banks

    def sp_rows(self, n: int, beside: int | None = None, bank: int | None = None) -> int:
        """``n`` rows; with ``beside``, starting one bank after it, so that row i of both
        buffers sits in different banks and the two can be read in the same cycle; with
        ``bank``, starting in that bank."""
        if beside is not None:
            self.sp += (beside + 1 - self.sp) % self.banks
        if bank is not None:
            self.sp += (bank - self.sp) % self.banks
        start, self.sp = self.sp, self.sp + n
        if self.sp > self.g.sp_rows:
            raise ProgramError(f"the scratchpad ({self.g.sp_rows} rows) cannot hold the buffers")
        return start

    def acc_rows(self, n: int) -> int:
        start, self.acc = self.acc, self.acc + n
        if self.acc > self.g.acc_rows:
            raise ProgramError(
                f"the accumulator memory ({self.g.acc_rows} rows) cannot hold the buffers"
            )
        return start


def _outputs(
    builder,
    g: Geometry,
    ep,
    mem: _Memory,
    m: int,
    n: int,
    tm: int,
    tn: int,
    tiles_n: int,
    elem,
    nb: int = 1,
):
    """Declare y (and residual), reserve output/parameter buffers for ``nb`` tiles of ``tm``
    rows at a time; return what the tiles need."""
    mp = -(-m // tm) * tm
    if ep is None:
        ar = g.acc_dram_row_bytes(elem)
        y = builder.alloc(tiles_n * mp * ar)
        bits = 32 if elem == AccElement.INT32 else g.acc_elem_bytes * 8
        spec = TensorSpec(
            "y",
            (m, n),
            "acc",
            bits,
            y,
            ((1, tn, 0, mp * ar * 8), (0, 1, 0, ar * 8), (1, 1, tn, bits)),
        )
        builder.tensor(spec, output=True)
        acc = [mem.acc_rows(nb * tm), mem.acc_rows(nb * tm)]
        return {"y": y, "acc": acc, "mp": mp, "elem": elem}
    _check_epilogue(ep, n)
    r = g.sp_row_bytes
    fmt = "int8" if ep.out_signed else "uint8"
    y = builder.alloc(tiles_n * mp * r)
    builder.tensor(
        TensorSpec(
            "y", (m, n), fmt, 8, y, ((1, tn, 0, mp * r * 8), (0, 1, 0, r * 8), (1, 1, tn, 8))
        ),
        output=True,
    )
    out = {"y": y, "mp": mp, "acc": [mem.acc_rows(nb * tm)] * 2}
    out["out"] = [mem.sp_rows(tm), mem.sp_rows(tm)]
    out["params"] = [mem.acc_rows(3 * nb), mem.acc_rows(3 * nb)]
    out["param_addr"] = [
        builder.constant(_epilogue_params(g, ep, j * tn, min(tn, n - j * tn)))
        for j in range(tiles_n)
    ]
    if ep.residual:
        res = builder.alloc(tiles_n * mp * r)
        builder.tensor(
            TensorSpec(
                "residual",
                (m, n),
                fmt,
                8,
                res,
                ((1, tn, 0, mp * r * 8), (0, 1, 0, r * 8), (1, 1, tn, 8)),
            )
        )
        out["res"] = res
        out["res_buf"] = [mem.sp_rows(nb * tm), mem.sp_rows(nb * tm)]
    return out


def _tile_loads(g: Geometry, ep, o: dict, t: int, i: int, j: int, rows: int, tm: int) -> list[dict]:
    """The parameter and residual loads that ride with a tile's first chunk."""
    if ep is None:
        return []
    slot = t % 2
    loads = [
        dict(
            mem=1,
            elem=AccElement.INT32,
            sram_addr=o["params"][slot],
            dram_addr=o["param_addr"][j],
            dram_stride=0,
            y_size=1,
            x_size=3,
        )
    ]
    if ep.residual:
        r = g.sp_row_bytes
        addr = o["res"] + j * o["mp"] * r + i * tm * r
        loads.append(_block(o["res_buf"][slot], addr, rows))
    return loads


def _post_fields(ep: Epilogue) -> dict:
    """The POST fields an epilogue sets, besides the addresses and the row count."""
    return dict(
        residual=int(ep.residual),
        res_shift=ep.res_shift,
        out_signed=int(ep.out_signed),
        zero_point=ep.zero_point,
        lo=ep.lo,
        hi=ep.hi,
    )


def _finish_tile(
    sched: _Schedule, g: Geometry, ep, o: dict, t: int, i: int, j: int, rows: int, tm: int
):
    slot = t % 2
    if ep is None:
        elem = o["elem"]
        ar = g.acc_dram_row_bytes(elem)
        addr = o["y"] + j * o["mp"] * ar + i * tm * ar
        store = dict(mem=1, elem=elem, sram_addr=o["acc"][slot], dram_addr=addr, dram_stride=0)
        sched.store(t, **store, y_size=1, x_size=rows)
        return
    sched.post(
        t,
        acc_addr=o["acc"][slot],
        out_addr=o["out"][slot],
        param_addr=o["params"][slot],
        res_addr=o["res_buf"][slot] if ep.residual else 0,
        rows=rows,
        **_post_fields(ep),
    )
    r = g.sp_row_bytes
    addr = o["y"] + j * o["mp"] * r + i * tm * r
    sched.store(
        t, mem=0, sram_addr=o["out"][slot], dram_addr=addr, dram_stride=0, y_size=1, x_size=rows
    )


# --- the systolic array ---------------------------------------------------------------------


def _lower_array(
    builder,
    g: Geometry,
    config,
    weights,
    m,
    w_name,
    a_name,
    dataflow,
    ep,
    w_scales,
    max_chunk,
    elem,
):
    names = [str(p) for p in config.array.modes]
    key = f"{w_name}*{a_name}"
    if key not in names:
        raise ProgramError(f"the array has no mode {key} (it has {', '.join(names)})")
    mode = names.index(key)
    spec = g.array_modes[mode]
    if dataflow is None:
        dataflow = "ws" if g.dataflow == "ws" else "os"
    if dataflow not in ("ws", "os") or g.dataflow not in ("both", dataflow):
        raise ProgramError(f"the array runs {g.dataflow}, not {dataflow!r}")
    if spec.block and dataflow == "ws":
        raise ProgramError(f"{key} is an MX mode: it runs output-stationary only")
    if dataflow == "ws" and g.rows > g.max_steps(mode):
        raise ProgramError(
            f"{key}: weight-stationary columns of {g.rows} rows could saturate the accumulators; "
            "use output-stationary"
        )
    k, n = weights.shape
    lanes, rows, cols, r = spec.lanes, g.rows, g.cols, g.sp_row_bytes
    bus = g.bus
    os = dataflow == "os"
    banks = builder.config.memory.scratchpad_banks
    steps = -(-k // lanes)
    if not os:
        steps = -(-steps // rows) * rows  # whole weight tiles
    tn = cols
    tiles_n = -(-n // tn)
    blk = _array_blocking(g, builder.config, spec, mode, os, m, steps, tiles_n, ep, max_chunk)
    tm, nb, ks = blk.tm, blk.nb, blk.ks
    mem = _Memory(g, banks)
    o = _outputs(builder, g, ep, mem, m, n, tm, tn, tiles_n, elem, nb)
    mp = o["mp"]
    chunks = _split(steps, ks)

    # Weights: one scratchpad row per step, per n tile (weight-stationary: a weight tile's PE
    # rows in order, so a chunk of tiles is contiguous).
    wp = np.zeros((steps * lanes, tiles_n * tn), dtype=np.int64)
    wp[:k, :n] = weights & ((1 << spec.w_code_bits) - 1)  # signed values -> their codes
    w_rows = []
    for j in range(tiles_n):
        words = pack_lanes(wp[:, j * tn : (j + 1) * tn].T, lanes, spec.w_code_bits).T  # steps x tn
        if bus.w_word_bits == 8:  # byte words: every row at once
            block = np.zeros((len(words), r), dtype=np.uint8)
            block[:, : words.shape[1]] = words & 0xFF
            w_rows.append(block.tobytes())
        else:
            w_rows.extend(_row(wrow, bus.w_word_bits, r) for wrow in words)
    w_base = builder.constant(b"".join(w_rows))
    scale_base = None
    if spec.block:
        scale_base = _mx_scales(builder, g, w_scales, k, n, spec.block, tiles_n, tn, mp)

    # The input: os: per tile of ``rows`` rows of A, one row per step (the words of its rows);
    # ws: per weight tile, one row per row of A (its words for each PE row).
    ab, cb = bus.a_word_bits, spec.a_code_bits
    if os:
        row_tiles = -(-m // rows)
        x = builder.constant(bytes(row_tiles * steps * r))  # padding must read as zero
        terms = (
            (0, rows, 0, steps * r * 8),
            (0, 1, rows, ab),
            (1, lanes, 0, r * 8),
            (1, 1, lanes, cb),
        )
    else:
        x = builder.constant(bytes(steps // rows * mp * r))
        terms = (
            (1, rows * lanes, 0, mp * r * 8),
            (0, 1, 0, r * 8),
            (1, lanes, rows, ab),
            (1, 1, lanes, cb),
        )
    x_format = spec.mx[1] if spec.block else spec.activation.name  # MX: element codes
    builder.tensor(TensorSpec("x", (m, k), x_format, spec.activation.bits, x, terms))
    if spec.block:
        builder.tensor(scale_base["x_spec"](m))

    # Buffers: two of each, A (an m block's rows of a chunk, shared by the block's n tiles),
    # W (one n tile's chunk) and MX scales; every A buffer in another bank than every W
    # buffer, so the streams of an output-stationary step read both in one cycle.
    a_bufs = [mem.sp_rows(blk.a_rows, bank=0) for _ in range(2)]
    w_bufs = [mem.sp_rows(ks, bank=1 % banks) for _ in range(2)]
    s_bufs = [mem.sp_rows(blk.scale_rows) for _ in range(2)] if spec.block else [0, 0]

    blocks = [(i, jb) for i in range(-(-m // tm)) for jb in range(-(-tiles_n // nb))]
    gemms_total = -(-m // tm) * tiles_n * len(chunks)
    outs_total = -(-m // tm) * tiles_n
    emitted = {"gemm": 0, "a": 0, "out": 0}

    def gemm_group(loads: list[dict], gemm: dict, *, pop_store, defer, finishes, ahead=()):
        """One GEMM with the loads only it needs: the first pops a freed buffer set, the last
        says the data is there; the GEMM frees its buffers unless ``defer``. ``ahead``: loads
        for later GEMMs, queued after these."""
        n_ = emitted["gemm"]
        for li, kw in enumerate(loads):
            builder.load(**kw, pop_next=li == 0 and n_ >= 2, push_next=li == len(loads) - 1)
        for kw in ahead:
            builder.load(**kw)
        builder.gemm(
            **gemm,
            pop_prev=True,
            pop_next=pop_store,
            push_prev=not defer and n_ + 2 < gemms_total,
            push_next=finishes,
        )
        emitted["gemm"] += 1

    # A blocks in order: (m block, chunk); the A rows of the next block are loaded
    # while the second GEMM of this one runs (its buffer is free once the first has begun:
    # every GEMM of the block before has ended), so a block's loads spread over its GEMMs.
    a_blocks = [(i, ci) for i, _ in blocks for ci in range(len(chunks))]

    def a_load(a: int) -> dict:
        i, ci = a_blocks[a]
        s0, ns = chunks[ci]
        rows_i = min(tm, m - i * tm)
        if os:
            src, y_size, x_size = x + (i * (tm // rows) * steps + s0) * r, -(-rows_i // rows), ns
            stride = steps * r
        else:
            src, y_size, x_size = x + (s0 // rows * mp + i * tm) * r, ns // rows, rows_i
            stride = mp * r
        return dict(
            mem=0,
            sram_addr=a_bufs[a % 2],
            dram_addr=src,
            dram_stride=stride,
            y_size=y_size,
            x_size=x_size,
        )

    loaded_ahead = set()
    for b_index, (i, jb) in enumerate(blocks):
        rows_i = min(tm, m - i * tm)
        tiles_i = -(-rows_i // rows)  # output-stationary row tiles
        js = list(range(jb * nb, min(tiles_n, (jb + 1) * nb)))
        slot = b_index % 2
        acc_of = lambda jj: o["acc"][slot] + jj * tm  # noqa: E731, B023
        for ci, (s0, ns) in enumerate(chunks):
            a = emitted["a"]
            a_buf = a_bufs[a % 2]
            emitted["a"] += 1
            for jj, j in enumerate(js):
                w_slot = emitted["gemm"] % 2
                loads = []
                if jj == 0 and a not in loaded_ahead:
                    loads.append(a_load(a))
                if ci == 0 and ep is not None:
                    loads.append(
                        dict(
                            mem=1,
                            elem=AccElement.INT32,
                            sram_addr=o["params"][slot] + 3 * jj,
                            dram_addr=o["param_addr"][j],
                            dram_stride=0,
                            y_size=1,
                            x_size=3,
                        )
                    )
                    if ep.residual:
                        addr = o["res"] + (j * mp + i * tm) * r
                        loads.append(_block(o["res_buf"][slot] + jj * tm, addr, rows_i))
                loads.append(_block(w_bufs[w_slot], w_base + (j * steps + s0) * r, ns))
                s_buf = s_bufs[w_slot]
                if spec.block:
                    nbk, b0 = -(-ns // spec.block), s0 // spec.block
                    blocks_k = -(-k // spec.block)
                    loads.append(
                        dict(
                            mem=0,
                            sram_addr=s_buf,
                            dram_addr=scale_base["a"](i * (tm // rows), b0),
                            dram_stride=blocks_k * r,
                            y_size=tiles_i,
                            x_size=nbk,
                        )
                    )
                    loads.append(_block(s_buf + tiles_i * nbk, scale_base["w"](j, b0), nbk))
                ahead = []
                if jj == 1 and a + 1 < len(a_blocks):
                    ahead.append(a_load(a + 1))
                    loaded_ahead.add(a + 1)
                last_of_block = ci == len(chunks) - 1 and jj == len(js) - 1
                gemm_group(
                    loads,
                    dict(
                        mode=mode,
                        dataflow=int(os),
                        accumulate=int(ci > 0),
                        a_addr=a_buf,
                        w_addr=w_bufs[w_slot],
                        scale_addr=s_buf,
                        acc_addr=acc_of(jj),
                        m=rows_i,
                        k=ns,
                    ),
                    pop_store=ep is None and ci == 0 and jj == 0 and b_index >= 2,
                    defer=ep is not None and last_of_block,
                    finishes=ep is None and ci == len(chunks) - 1,
                    ahead=ahead,
                )
        last_gemm = emitted["gemm"] - 1
        for jj, j in enumerate(js):
            p_ = emitted["out"]
            emitted["out"] += 1
            if ep is None:
                ar = g.acc_dram_row_bytes(o["elem"])
                builder.store(
                    mem=1,
                    elem=o["elem"],
                    sram_addr=acc_of(jj),
                    dram_addr=o["y"] + (j * mp + i * tm) * ar,
                    dram_stride=0,
                    y_size=1,
                    x_size=rows_i,
                    pop_prev=True,
                    push_prev=jj == len(js) - 1 and b_index + 2 < len(blocks),
                )
                continue
            out_buf = o["out"][p_ % 2]
            builder.post(
                acc_addr=acc_of(jj),
                out_addr=out_buf,
                param_addr=o["params"][slot] + 3 * jj,
                res_addr=o["res_buf"][slot] + jj * tm if ep.residual else 0,
                rows=rows_i,
                **_post_fields(ep),
                pop_next=p_ >= 2,
                push_prev=jj == len(js) - 1 and last_gemm + 2 < gemms_total,
                push_next=True,
            )
            builder.store(
                mem=0,
                sram_addr=out_buf,
                dram_addr=o["y"] + (j * mp + i * tm) * r,
                dram_stride=0,
                y_size=1,
                x_size=rows_i,
                pop_prev=True,
                push_prev=p_ + 2 < outs_total,
            )
    return GemmPlan("array", key, dataflow, tm, tn, ks, -(-m // tm) * tiles_n, emitted["gemm"])


@dataclass(frozen=True)
class _Blocking:
    """An array GEMM's blocking: ``tm`` rows of A per m block (its A rows stay in the
    scratchpad for ``nb`` n tiles of ``cols`` columns) and ``ks`` steps per K chunk."""

    tm: int
    nb: int
    ks: int
    a_rows: int  # scratchpad rows of one A buffer
    scale_rows: int
    cycles: float  # the estimate it was chosen by


def _array_blocking(g, config, spec, mode, os, m, steps, tiles_n, ep, max_chunk) -> _Blocking:
    """The blocking with the fewest estimated cycles that fits the memories: per GEMM the
    larger of its array time (fill and drain included) and its loads' DRAM time, plus POST."""
    rows, cols, banks = g.rows, g.cols, config.memory.scratchpad_banks
    d, latency = config.dram.bytes_per_cycle, config.dram.latency_cycles
    row_beats = g.sp_row_bytes / d
    gran = rows if not os else (spec.block or 1)
    cap = steps
    if os:
        cap = min(cap, g.max_steps(mode) // gran * gran if spec.block else g.max_steps(mode))
    if max_chunk:
        cap = min(cap, max(gran, max_chunk // gran * gran))
    if cap < 1:
        raise ProgramError(f"{spec.name}: no chunk of whole {gran}-step blocks fits")
    ks_options = set()
    for c in range(1, 65):
        ks = -(-steps // c)
        ks = -(-ks // gran) * gran
        if ks <= cap:
            ks_options.add(ks)
    ks_options.add(cap)
    if os:  # whole bank rounds keep the two streams on different banks
        ks_options |= {ks // banks * banks for ks in list(ks_options) if ks > banks}
    if os:
        tm_options = {min(m, t * rows) for t in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)}
        tm_options.add(min(m, -(-m // rows) * rows))
    else:
        tm_options = {
            min(m, t) for t in (rows, 2 * rows, 4 * rows, 8 * rows, 16, 32, 64, 128, 256, 512, 1024)
        }
        tm_options.add(m)
    nb_options = {min(tiles_n, v) for v in (1, 2, 3, 4, 6, 8, 16, 32, 64)}
    best = None
    for tm in sorted(tm_options):
        tiles_i = -(-tm // rows)
        tm_acc = tiles_i * rows if os else tm
        for ks in sorted(ks_options):
            if ks < 1:
                continue
            a_rows = tiles_i * ks if os else tm * (ks // rows)
            scale_rows = (tiles_i + 1) * -(-ks // spec.block) if spec.block else 0
            sp = 2 * (a_rows + ks + scale_rows) + 3 * banks
            if ep is not None:
                sp += 2 * tm_acc
            for nb in sorted(nb_options):
                need_sp = sp + (2 * nb * tm_acc if ep is not None and ep.residual else 0)
                need_acc = nb * tm_acc * (2 if ep is None else 1) + (6 * nb if ep else 0)
                if need_sp > g.sp_rows or need_acc > g.acc_rows:
                    continue
                gemms = -(-m // tm) * tiles_n * -(-steps // ks)
                if os:
                    array = tiles_i * max(ks, rows) + 2 * rows + cols + 6 + g.pe_stages
                else:
                    array = (ks // rows) * max(tm, rows) + 2 * rows + cols + 6 + g.pe_stages
                loads = (ks + a_rows / nb + scale_rows) * row_beats + 2 * (latency + 3)
                cycles = gemms * max(array, loads)
                if ep is not None:
                    cycles += -(-m // tm) * tiles_n * (tm + 12)
                choice = (cycles, gemms, -tm)
                if best is None or choice < best[0]:
                    best = (choice, _Blocking(tm, nb, ks, a_rows, scale_rows, cycles))
    if best is None:
        raise ProgramError(
            f"the scratchpad ({g.sp_rows} rows) and accumulator memory ({g.acc_rows} rows) "
            f"cannot hold two chunks of {spec.name}"
        )
    return best[1]


def _row(words, width: int, row_bytes: int) -> bytes:
    """``words`` of ``width`` bits packed from bit 0 up into ``row_bytes`` bytes."""
    words = np.asarray(words, dtype=np.int64)
    if width == 8:  # the common case, and a fast one
        return (words & 0xFF).astype(np.uint8).tobytes().ljust(row_bytes, b"\0")
    value = 0
    for i, w in enumerate(words.tolist()):
        value |= (w & ((1 << width) - 1)) << (i * width)
    return value.to_bytes(row_bytes, "little")


def _mx_scales(builder, g: Geometry, w_scales, k, n, block, tiles_n, tn, mp):
    """Scale rows, one per block: the W scales (constants, per n tile) and the A scales (the
    input ``x_scales``, M x blocks E8M0 codes, per m tile), a byte per column / row."""
    blocks = -(-k // block)
    w_scales = np.asarray(w_scales if w_scales is not None else [], dtype=np.int64)
    if w_scales.shape != (blocks, n):
        raise ProgramError(f"MX weights need w_scales of shape {(blocks, n)}, not {w_scales.shape}")
    r, rows = g.sp_row_bytes, g.rows
    w_rows = []
    for j in range(tiles_n):
        for b in range(blocks):
            w_rows.append(bytes(int(v) for v in w_scales[b, j * tn : (j + 1) * tn]).ljust(r, b"\0"))
    w_addr = builder.constant(b"".join(w_rows))
    a_addr = builder.constant(bytes(-(-mp // rows) * blocks * r))
    terms = ((0, rows, 0, blocks * r * 8), (0, 1, rows, 8), (1, 1, 0, r * 8))
    return {
        "a": lambda i, b0: a_addr + (i * blocks + b0) * r,
        "w": lambda j, b0: w_addr + (j * blocks + b0) * r,
        "x_spec": lambda m: TensorSpec("x_scales", (m, blocks), "e8m0", 8, a_addr, terms),
    }


# --- the LUT core --------------------------------------------------------------------------


def _lower_lut(builder, g: Geometry, weights, m, w_name, a_name, ep, max_chunk, elem):
    if a_name != g.lut_activation:
        raise ProgramError(f"the LUT core takes {g.lut_activation} activations, not {a_name}")
    if w_name not in g.lut_modes:
        raise ProgramError(
            f"the LUT core has no {w_name} weights (it has {', '.join(g.lut_modes)})"
        )
    mode = g.lut_modes.index(w_name)
    planes = g.lut_planes(mode)
    group, tm, tn, r = g.lut_group, g.lut_tile_m, g.lut_tile_n, g.sp_row_bytes
    k, n = weights.shape
    groups = -(-k // group)
    mem = _Memory(g, builder.config.memory.scratchpad_banks)
    tiles_n, tiles_m = -(-n // tn), -(-m // tm)
    o = _outputs(builder, g, ep, mem, m, n, tm, tn, tiles_n, elem)
    fixed = 4 * tm + 2 * mem.banks + (2 * tm if ep is not None and ep.residual else 0)
    ks = min(groups, max(0, (g.sp_rows - fixed) // (2 * (1 + planes))), g.lut_max_groups(mode))
    ks = min(ks, max_chunk or ks)
    if ks < 1:
        raise ProgramError(f"the scratchpad ({g.sp_rows} rows) cannot hold two chunks of one group")
    wp = np.zeros((groups * group, tiles_n * tn), dtype=np.int64)
    wp[:k, :n] = weights
    w_rows = []
    for j in range(tiles_n):
        for s in range(groups):
            codes = wp[s * group : (s + 1) * group, j * tn : (j + 1) * tn]  # group x tn
            for p in range(planes):
                bits = ((codes >> p) & 1).T.reshape(-1)  # column-major: c * group + j
                w_rows.append(_row(bits, 1, r))
    w_base = builder.constant(b"".join(w_rows))
    x = builder.constant(bytes(tiles_m * groups * r))  # padding must read as zero
    terms = (
        (0, tm, 0, groups * r * 8),
        (0, 1, tm, group * 8),
        (1, group, 0, r * 8),
        (1, 1, group, 8),
    )
    builder.tensor(TensorSpec("x", (m, k), a_name, 8, x, terms))
    bufs = []
    for _ in range(2):
        a_buf = mem.sp_rows(ks)
        bufs.append((a_buf, mem.sp_rows(ks * planes, beside=a_buf)))
    chunks = _split(groups, ks)
    sched = _Schedule(builder, [len(chunks)] * (tiles_m * tiles_n), ep is None)
    t = 0
    for i in range(tiles_m):
        rows_i = min(tm, m - i * tm)
        for j in range(tiles_n):
            for ci, (s0, ns) in enumerate(chunks):
                a_buf, w_buf = bufs[sched.chunk % 2]
                loads = _tile_loads(g, ep, o, t, i, j, rows_i, tm) if ci == 0 else []
                loads += [
                    _block(a_buf, x + (i * groups + s0) * r, ns),
                    _block(w_buf, w_base + ((j * groups + s0) * planes) * r, ns * planes),
                ]
                sched.load_chunk(loads)
                gemm = dict(
                    mode=mode,
                    accumulate=int(ci > 0),
                    a_addr=a_buf,
                    w_addr=w_buf,
                    acc_addr=o["acc"][t % 2],
                    m=rows_i,
                    k=ns,
                )
                sched.compute_chunk(
                    [(builder.lut_gemm, gemm)],
                    first_of_tile=ci == 0,
                    last_of_tile=ci == len(chunks) - 1,
                    tile=t,
                )
            _finish_tile(sched, g, ep, o, t, i, j, rows_i, tm)
            t += 1
    return GemmPlan("lut", f"{w_name}*{a_name}", "-", tm, tn, ks, t, sched.chunk)

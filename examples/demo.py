"""qaccel demo (``make demo``): a CNN for handwritten digits, quantized, compiled for an
accelerator, run on the simulator over the whole test split and on the generated Verilog.

1. The model: ``examples/digits_cnn.onnx``, a small CNN trained on scikit-learn's digits by
   ``examples/train_digits.py`` (the data ships inside the package; nothing is downloaded).
2. int8: onnxruntime's ``quantize_static`` (QDQ, per-channel weights), calibrated on 200
   training images; compiled for ``configs/lut.toml``: its layers run on the 8x8 int8 array.
3. W2A8: the compiler's own post-training quantization, 2-bit weights in conv2 and fc (the
   first layer stays int8, as low-bit networks usually keep it); those layers run on the LUT
   core of the same accelerator.
4. Both on the simulator over the 360 test images: accuracy next to the float model and
   onnxruntime's int8, cycles, MAC utilization and energy per image.
5. A few images on the accelerator's Verilog under Icarus (cocotb, AXI DRAM, AXI-Lite host):
   every layer's outputs bit for bit and its cycle counters equal to the simulator's.

The report is printed and written to build/demo/report.md (and report.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

W2A8 = "conv2=int2*int8,fc=int2*int8"
CALIBRATION_IMAGES = 200


def _say(text: str) -> None:
    print(text, flush=True)


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(logits).argmax(axis=1) == labels))


def _per_image(model) -> dict:
    """Cycles, utilization and energy of one image (a batch-1 compile)."""
    rows = model.report()
    cycles = sum(r.cycles for r in rows)
    ideal = sum(r.utilization * r.cycles for r in rows)
    return {
        "cycles": cycles,
        "utilization": ideal / cycles if cycles else 0.0,
        "energy_uj": sum(r.energy_uj for r in rows),
        "time_us": cycles / model.config.clock_mhz,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "lut.toml")
    parser.add_argument(
        "--rtl-images", type=int, default=1, help="int8 images run on Icarus (default 1)"
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # onnxruntime's quantizer suggests pre-processing
    sys.stdout.reconfigure(line_buffering=True)
    import onnx
    import onnxruntime as ort
    from train_digits import split

    from compiler import zoo
    from compiler.network import compile_model
    from compiler.ptq import quantize_model
    from hw.accel_bench import verify_models
    from qaccel import config

    build = ROOT / "build" / "demo"
    build.mkdir(parents=True, exist_ok=True)
    start = time.time()
    cfg = config.load_config(args.config)
    x_train, x_test, _, y_test = split()
    calib = [x_train[:CALIBRATION_IMAGES]]
    model = onnx.load(ROOT / "examples" / "digits_cnn.onnx")
    _say(
        f"qaccel demo: a CNN for handwritten digits (scikit-learn digits, {len(x_test)} test "
        f"images) on {args.config.name}\n"
    )

    def ort_run(m):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": x_test})[0]

    float_logits = ort_run(model)
    int8_model = zoo.quantize(model, calib, per_channel=True)
    ort_logits = ort_run(int8_model)
    w2_model = quantize_model(model, calib, precision=W2A8)

    results, compiled = {}, {}
    for name, quantized in (("int8", int8_model), ("W2A8", w2_model)):
        _say(f"compiling and simulating {name} ...")
        one = compile_model(quantized, cfg, batch=1)
        batch = compile_model(quantized, cfg, batch=len(x_test))
        t = time.time()
        logits = batch.run({"x": x_test})["logits"]
        results[name] = {
            "accuracy": _accuracy(logits, y_test),
            "simulate_s": time.time() - t,
            "units": sorted({f"{n['unit']} {n['attrs']['mode']}" for n in one.layers}),
            **_per_image(one),
        }
        compiled[name] = (one, logits)
    int8_logits = compiled["int8"][1]
    lsb = compiled["int8"][0].output_scale("logits")
    agree = np.abs(int8_logits - ort_logits) / lsb

    _say(f"running {args.rtl_images} int8 image(s) and 1 W2A8 image on the Verilog (Icarus) ...")
    t = time.time()
    jobs = [(compiled["int8"][0], {"x": x_test[i : i + 1]}) for i in range(args.rtl_images)]
    jobs.append((compiled["W2A8"][0], {"x": x_test[:1]}))
    checks = verify_models(jobs, simulator="icarus", build_dir=build / "icarus")
    rtl_s = time.time() - t
    bad = [c for c in checks if c.error]

    lines = [
        f"# qaccel demo: digits CNN on {args.config.name}",
        "",
        f"{len(x_test)} test images; int8 = onnxruntime quantize_static (QDQ, per channel); "
        f"W2A8 = the compiler's PTQ, `{W2A8}`.",
        "",
        "| variant | runs on | accuracy | cycles / image | µs / image | MAC utilization "
        "| energy / image |",
        "|---|---|---|---|---|---|---|",
        f"| float | onnxruntime | {_accuracy(float_logits, y_test):.2%} | | | | |",
        f"| int8 | onnxruntime | {_accuracy(ort_logits, y_test):.2%} | | | | |",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | simulator: {', '.join(r['units'])} | {r['accuracy']:.2%} | "
            f"{r['cycles']:,} | {r['time_us']:.1f} | {r['utilization']:.1%} | "
            f"{r['energy_uj']:.3g} µJ |"
        )
    lines += [
        "",
        "int8 simulator vs onnxruntime: "
        + (
            f"all {agree.size} logits equal."
            if agree.max() < 1e-3
            else f"{np.mean(agree < 1e-3):.2%} of the {agree.size} logits equal, the rest "
            f"within {agree.max():.0f} LSB."
        ),
        "",
        f"## The RTL (Icarus, {rtl_s:.0f} s)",
        "",
        "| image | layer | RTL cycles | simulator cycles | outputs and counters |",
        "|---|---|---|---|---|",
    ]
    per_model = [len(j[0].layers) for j in jobs]
    k = 0
    for i, n in enumerate(per_model):
        tag = f"int8 #{i}" if i < args.rtl_images else "W2A8 #0"
        for c in checks[k : k + n]:
            verdict = "equal" if c.error is None else c.error
            lines.append(f"| {tag} | {c.layer} | {c.rtl_cycles:,} | {c.sim_cycles:,} | {verdict} |")
        k += n
    for name, (one, _) in compiled.items():
        lines += ["", f"## {name} layers (one image)", "", "```", one.format_report(), "```"]
    lines += ["", f"demo time: {time.time() - start:.0f} s"]
    report = "\n".join(lines) + "\n"
    (build / "report.md").write_text(report)
    (build / "report.json").write_text(
        json.dumps(
            {
                "float_accuracy": _accuracy(float_logits, y_test),
                "ort_int8_accuracy": _accuracy(ort_logits, y_test),
                "variants": results,
                "rtl": [c.__dict__ for c in checks],
            },
            indent=1,
        )
        + "\n"
    )
    print()
    print(report)
    print(f"wrote {build / 'report.md'}")
    if bad:
        print(f"error: the RTL and the simulator differ on {len(bad)} layers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

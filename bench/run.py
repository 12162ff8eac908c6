"""`make bench`: run every benchmark and write bench/RESULTS.md."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import array_synth  # noqa: E402
import format_speed  # noqa: E402

SECTIONS = [format_speed, array_synth]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; Python {platform.python_version()}; numpy {np.__version__}"


def main() -> int:
    parts = ["# qaccel benchmarks", "", f"Machine: {machine()}.", ""]
    for section in SECTIONS:
        text = section.run()
        print(text)
        parts.append(text)
    (HERE / "RESULTS.md").write_text("\n".join(parts))
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

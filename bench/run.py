"""`make bench`: run every benchmark and write bench/RESULTS.md.

``python bench/run.py lut_vs_mac ...`` runs only the named sections and keeps the others'
text from the existing RESULTS.md (synthesis sections take hours on two cores). The format
speeds name the machine they ran on; the synthesis figures depend on the tools' versions only."""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import array_synth  # noqa: E402
import board_presets  # noqa: E402
import engine_speed  # noqa: E402
import format_speed  # noqa: E402
import generate_speed  # noqa: E402
import lut_vs_mac  # noqa: E402
import resnet18_compile  # noqa: E402
import scalesim_compare  # noqa: E402
import utilization  # noqa: E402
import yardstick  # noqa: E402

SECTIONS = {
    m.__name__: m
    for m in (
        format_speed,
        array_synth,
        yardstick,
        lut_vs_mac,
        engine_speed,
        scalesim_compare,
        utilization,
        resnet18_compile,
        generate_speed,
        board_presets,
    )
}


def previous_sections(text: str) -> dict[str, str]:
    """Section title -> its markdown, from a RESULTS.md."""
    found = {}
    for chunk in re.split(r"^(?=## )", text, flags=re.M)[1:]:
        found[chunk.splitlines()[0].removeprefix("## ").strip()] = chunk.rstrip("\n") + "\n"
    return found


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"unknown section {unknown[0]!r}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    results = HERE / "RESULTS.md"
    kept = previous_sections(results.read_text()) if names and results.is_file() else {}
    parts = ["# qaccel benchmarks", ""]
    for name, section in SECTIONS.items():
        if names and name not in names:
            parts.append(kept.get(section.TITLE, f"## {section.TITLE}\n\nNot run yet.\n"))
            continue
        text = section.run()
        print(text)
        parts.append(text)
    results.write_text("\n".join(parts))
    print(f"wrote {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Render var/reliability-figures.json (written by the reliability tests) as a Markdown table.

``python -m tests.reliability.figures`` prints the figures of the last run, one row per figure and
one column per database, ready to paste into docs/reliability.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FIGURES_FILE = Path(__file__).resolve().parents[2] / "var" / "reliability-figures.json"

SECTIONS = {
    "fuzz": "Contract fuzzing (schemathesis)",
    "properties": "Property-based tests (hypothesis)",
    "concurrency": "Concurrency on gunicorn",
    "faults": "Faults injected",
    "hostile_input": "Hostile input",
}


def render(data: dict[str, dict[str, dict[str, object]]]) -> str:
    backends = sorted({backend for section in data.values() for backend in section})
    lines = [f"| figure | {' | '.join(backends)} |", f"|---|{'---|' * len(backends)}"]
    for section, title in SECTIONS.items():
        if section not in data:
            continue
        lines.append(f"| **{title}** |{' |' * len(backends)}")
        names = sorted({name for values in data[section].values() for name in values} - {"recorded_at"})
        for name in names:
            cells = [str(data[section].get(backend, {}).get(name, "-")) for backend in backends]
            lines.append(f"| {name.replace('_', ' ')} | {' | '.join(cells)} |")
    stamps = sorted(str(v.get("recorded_at")) for s in data.values() for v in s.values() if v.get("recorded_at"))
    if stamps:
        lines.append("")
        lines.append(f"Recorded between {stamps[0]} and {stamps[-1]}.")
    return "\n".join(lines)


def main() -> int:
    if not FIGURES_FILE.exists():
        print(f"no figures yet: run `make reliability` (writes {FIGURES_FILE})", file=sys.stderr)
        return 1
    print(render(json.loads(FIGURES_FILE.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

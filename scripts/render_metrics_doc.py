"""Write core/catalogue.py's tables into docs/metrics.md, between its catalogue markers (`--check`: only compare).

Run from anywhere: `.venv/bin/python scripts/render_metrics_doc.py`. The rest of the page is left as it is;
tests/unit/core/test_catalogue.py fails while the page and the catalogue differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's core, not an installed one

from core.catalogue import render_markdown  # noqa: E402

DOC = ROOT / "docs" / "metrics.md"
BEGIN = "<!-- catalogue:begin"  # the line goes on to say where the tables come from
END = "<!-- catalogue:end -->"


def split(text: str) -> tuple[str, str, str]:
    """Return the page before the generated part (begin marker included), the part, and the rest (end marker on)."""
    start = text.index(BEGIN)
    body = text.index("\n", start) + 1
    end = text.index(END, body)
    return text[:body], text[body:end], text[end:]


def main(argv: list[str]) -> int:
    """Rewrite the page's generated part; with `--check`, return 1 when it is out of date instead."""
    head, current, tail = split(DOC.read_text(encoding="utf-8"))
    wanted = "\n" + render_markdown() + "\n"
    if current == wanted:
        return 0
    if "--check" in argv:
        print(f"{DOC} is out of date: run {Path(__file__).relative_to(ROOT)}", file=sys.stderr)
        return 1
    DOC.write_text(head + wanted + tail, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

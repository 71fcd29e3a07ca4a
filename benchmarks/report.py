"""What every benchmark leaves in its --out folder: results.json, table.md, and the table on stdout."""
from __future__ import annotations

import json
from pathlib import Path


def save_report(out: Path, results: object, table: str, plot: Path | None = None) -> None:
    """Write results.json (every figure) and table.md (what docs/BENCHMARKS.md quotes), print the table and
    where the plot is."""
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(table + "\n")
    print(table)
    if plot is not None:
        print(f"plot: {plot}")


def fmt_num(v: float | None) -> str:
    """Two decimals, or '-' where the figure does not exist (no fixes, no curve)."""
    return "-" if v is None else f"{v:.2f}"


def fmt_pct(v: float | None) -> str:
    """A share as a whole percentage, or '-' where it does not exist."""
    return "-" if v is None else f"{100 * v:.0f} %"

"""What every benchmark leaves in its --out folder: results.json, machine.json, table.md, and the table on
stdout."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from densernet_core.localization.report import fmt_spread, spread  # noqa: F401  (the benchmarks' one import)


def machine(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """The CPU a figure came from: trained checkpoints and every time depend on it (issue 22), so each
    report names it rather than "this machine"."""
    import torch

    from densernet_core.model.runtime import cpu_has_vnni

    fields: dict[str, str] = {}
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass  # not Linux: the platform's own name
    model = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:  # a VM's model name can be as bare as "AMD EPYC": which generation it is
        model += f", family {fields['cpu family']} model {fields.get('model', '?')}"
    flags = set(fields.get("flags", "").split())
    simd = [f for f in ("avx512_vnni", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return {"cpu": model, "cores": os.cpu_count(), "simd": simd, "vnni": cpu_has_vnni(cpuinfo),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def machine_line(m: dict | None = None) -> str:
    """One line for the top of a table: which CPU (and GPU), with which SIMD, how many threads."""
    m = m or machine()
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"Machine: {m['cpu']} ({m['cores']} cores; {', '.join(m['simd']) or 'no AVX2'}), torch {m['torch']}, "
            f"{m['torch_threads']} threads{gpu}.")


def save_report(out: Path, results: object, table: str, plot: Path | None = None) -> None:
    """Write results.json (every figure), machine.json (the CPU it came from) and table.md (what
    docs/BENCHMARKS.md quotes, under a line naming the machine); print them and where the plot is."""
    m = machine()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "machine.json").write_text(json.dumps(m, indent=2))
    table = machine_line(m) + "\n\n" + table
    (out / "table.md").write_text(table + "\n")
    print(table)
    if plot is not None:
        print(f"plot: {plot}")


def spread_rows(each: list[dict], keys: list[str], figures: tuple[str, ...],
                modes: tuple[str, ...] = ("single", "filtered")) -> dict:
    """`spread` of every figure of every row, over runs whose results share the layout
    {row: {mode: {figure: value}}} (one run per checkpoint or seed)."""
    return {k: {mode: {fig: spread([r[k][mode][fig] for r in each]) for fig in figures} for mode in modes}
            for k in keys}


def fmt_num(v: float | None) -> str:
    """Two decimals, or '-' where the figure does not exist (no fixes, no curve)."""
    return "-" if v is None else f"{v:.2f}"


def fmt_pct(v: float | None) -> str:
    """A share as a whole percentage, or '-' where it does not exist."""
    return "-" if v is None else f"{100 * v:.0f} %"

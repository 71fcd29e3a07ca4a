"""How strong the unit tests are (issue 23): mutmut's score on a random sample of mutants.

Mutates what setup.cfg's [mutmut] section names (the localization stage and image decoding), picks
`--n` mutants uniformly at random (`--seed`), runs the unit tests against each and reports, per
module and in all, how many the tests killed, how many hung past mutmut's time limit (also a
detection), how many survived and how many no selected test reaches. A full run is ~5,600 mutants,
hours on 2 cores; the sample's share carries a binomial standard error, printed beside it.

    .venv/bin/pip install mutmut==3.8.1
    .venv/bin/python benchmarks/bench_mutation.py --n 120 --seed 0

Run it in a clean checkout: mutmut writes mutants/ beside the code (git ignores it) and keeps its
verdicts there, so a second run only tests what changed. One thread (set here): mutmut's limit is in
CPU seconds, and OpenMP threads spinning while they wait for a core read as false timeouts.
"""
from __future__ import annotations

import argparse
import collections
import math
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import save_report  # noqa: E402

DETECTED = ("killed", "timeout")
NO_MUTANT = "no_such_module.x_none__mutmut_0"


def _mutmut(*args: str, check: bool = True) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    exe = Path(sys.executable).with_name("mutmut")
    if not exe.is_file():
        raise SystemExit(f"mutmut not found beside {sys.executable}: pip install mutmut==3.8.1")
    done = subprocess.run([str(exe), *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"mutmut {args[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout + done.stderr


def generate() -> None:
    """mutmut 3.8 has no generate-only command: a run filtered to a name no mutant has writes every mutant and
    times the clean tests, then stops at the empty filter."""
    out = _mutmut("run", NO_MUTANT, check=False)
    if not (ROOT / "mutants" / "mutmut-stats.json").is_file():
        raise SystemExit(f"mutmut did not generate the mutants:\n{out[-3000:]}")


def verdicts() -> dict[str, str]:
    """Every mutant's name and status as `mutmut results --all true` lists them."""
    out = {}
    for line in _mutmut("results", "--all", "true").splitlines():
        if "__mutmut_" in line:
            name, _, status = line.strip().partition(": ")
            out[name] = status
    return out


def module_of(name: str) -> str:
    """`pkg.mod.x_func__mutmut_3` or `pkg.mod.xǁClassǁmethod__mutmut_3` -> `pkg.mod`."""
    head = name.split("__mutmut_")[0]
    return head.split(".xǁ")[0] if ".xǁ" in head else head.rsplit(".", 1)[0]


def summarise(sample: list[str], status: dict[str, str]) -> dict:
    per = collections.defaultdict(collections.Counter)
    for name in sample:
        per[module_of(name)][status[name]] += 1
    total = sum(per.values(), collections.Counter())
    rows = {m: dict(c) for m, c in sorted(per.items())}
    covered = sum(total.values()) - total["no tests"] - total["not checked"]
    detected = sum(total[s] for s in DETECTED)
    share = detected / covered if covered else None
    se = math.sqrt(share * (1 - share) / covered) if covered else None
    return {"modules": rows, "total": dict(total), "covered": covered, "detected": detected,
            "score_of_covered": share, "se": se,
            "score_of_all": detected / max(len(sample) - total["not checked"], 1),
            "survivors": sorted(n for n in sample if status[n] == "survived")}


def table(res: dict) -> str:
    lines = ["| module | sampled | killed | timeout | survived | no tests |", "|---|---|---|---|---|---|"]
    for m, c in res["modules"].items():
        lines.append(f"| {m} | {sum(c.values())} | {c.get('killed', 0)} | {c.get('timeout', 0)} | "
                     f"{c.get('survived', 0)} | {c.get('no tests', 0)} |")
    t = res["total"]
    lines.append(f"| **all** | {sum(t.values())} | {t.get('killed', 0)} | {t.get('timeout', 0)} | "
                 f"{t.get('survived', 0)} | {t.get('no tests', 0)} |")
    if res["score_of_covered"] is not None:
        lines.append(f"\nscore: {100 * res['score_of_covered']:.1f} % ± {100 * res['se']:.1f} (1 SE) of the "
                     f"{res['covered']} mutants a test reaches; {100 * res['score_of_all']:.1f} % of all sampled")
    if t.get("not checked"):
        lines.append(f"{t['not checked']} sampled mutants not checked (run stopped early)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=120, help="mutants to sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--out", default="bench_out/mutation")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    generate()
    names = sorted(verdicts())
    random.Random(args.seed).shuffle(names)
    sample = sorted(names[: args.n])
    print(f"{len(names)} mutants; testing a sample of {len(sample)} (seed {args.seed})", flush=True)
    _mutmut("run", "--max-children", str(args.children), *sample)
    res = summarise(sample, verdicts())
    res.update(population=len(names), seed=args.seed)
    save_report(out, res, table(res))
    print("survivors:\n" + "\n".join(res["survivors"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

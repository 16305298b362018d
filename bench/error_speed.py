"""Time to fail: how long the `uda-sweep` console script takes to report a config or argument error.

Each case runs the installed command as a user would, in a fresh empty folder holding only the case's files: a
typo key in a sweep file, a wrong type in a run config, a missing file, an unknown sweep name, a bad flag value,
for every subcommand. A case passes when it exits 2 with an `error: ...` line (ours, or argparse's usage error),
prints no traceback and leaves the folder as it was. Reference in the same run: `python -c pass`, the floor
of any command. Goal: the slowest case under 2 s (validation must not wait for torch, Ray or MLflow to load).

    .venv/bin/python bench/error_speed.py [--repeat 3] [--publish]

Figures: each case's wall time and CPU time (medians of --repeat runs; CPU time is what other work on the cores
barely changes), exit status and message; the load average, since wall times on shared cores stretch. Last
line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "uda-sweep")
GOAL_S = 2.0

SWEEP = "name: speed\nrun:\n  method: {name: dance}\n  train: {steps: 20, eval_every: 10}\n"
RUN = "method: {name: dance}\ntrain: {steps: 20, eval_every: 10}\n"

# (case, arguments after `uda-sweep`, files written into the case's folder first)
CASES: list[tuple[str, list[str], dict[str, str]]] = [
    ("run: typo key in the sweep file", ["run", "s.yaml"], {"s.yaml": SWEEP + "search: {num_trails: 4}\n"}),
    ("run: wrong type in the sweep file", ["run", "s.yaml"], {"s.yaml": SWEEP + "search: {num_trials: many}\n"}),
    ("run: unknown objective metric", ["run", "s.yaml"], {"s.yaml": SWEEP + "objective: {metric: oracle/acc}\n"}),
    ("run: unknown method in run", ["run", "s.yaml"], {"s.yaml": SWEEP.replace("dance", "danse")}),
    ("run: missing sweep file", ["run", "missing.yaml"], {}),
    ("run: run.data.path not a data set", ["run", "s.yaml"], {"s.yaml": SWEEP + "  data: {path: nowhere}\n"}),
    ("train: wrong type in the run config", ["train", "r.yaml", "--out", "out"],
     {"r.yaml": RUN.replace("steps: 20", "steps: many")}),
    ("train: typo key in the run config", ["train", "r.yaml", "--out", "out"],
     {"r.yaml": RUN + "optim: {learning_rate: 0.1}\n"}),
    ("train: bad method parameter", ["train", "r.yaml", "--out", "out"],
     {"r.yaml": RUN.replace("{name: dance}", "{name: dance, params: {eta_nc: -1}}")}),
    ("train: missing run config", ["train", "missing.yaml", "--out", "out"], {}),
    ("train: data.path not a data set", ["train", "r.yaml", "--out", "out"],
     {"r.yaml": RUN + "data: {path: nowhere}\n"}),
    ("resume: no such sweep", ["resume", "nope"], {}),
    ("status: no such sweep", ["status", "nope"], {}),
    ("status: --watch not a number", ["status", "nope", "--watch", "soon"], {}),
    ("promote: no such sweep", ["promote", "nope"], {}),
    ("promote: --model-name MLflow refuses", ["promote", "nope", "--model-name", "a/b"], {}),
    ("promote: --min-source-val-acc not a number", ["promote", "nope", "--min-source-val-acc", "high"], {}),
    ("predict: --views not allowed", ["predict", "models:/m@champion", "in", "--out", "c.parquet", "--views", "3"], {}),
    ("predict: missing input", ["predict", "models:/m@champion", "missing", "--out", "c.parquet"], {}),
    ("rollback: no MLflow store here", ["rollback", "nope"], {}),
    ("data import: missing --target", ["data", "import", "--source", "a", "--out", "d"], {}),
    ("data import: no source labels", ["data", "import", "--source", "a", "--target", "b", "--out", "d"], {}),
    ("data generate: unknown survey", ["data", "generate", "--source", "hsc_typo", "--out", "d"], {}),
    ("data generate: --size not a size", ["data", "generate", "--size", "huge", "--out", "d"], {}),
    ("data show: not a data set", ["data", "show", "."], {}),
    ("cluster-check: missing file", ["cluster-check", "missing.yaml"], {}),
    ("unknown subcommand", ["sweep", "s.yaml"], {}),
]


def _files(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


def _children_cpu() -> float:
    """CPU seconds of finished child processes: unlike wall time, barely changed by other work on the cores."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_case(argv: list[str], files: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, text in files.items():
            (folder / name).write_text(text)
        before = _files(folder)
        t0, cpu0 = time.perf_counter(), _children_cpu()
        done = subprocess.run([CLI, *argv], cwd=folder, capture_output=True, text=True, timeout=300)
        seconds, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
        changed = sorted(set(_files(folder).items()) ^ set(before.items()))
    lines = done.stderr.strip().splitlines()
    message = next((ln for ln in lines if ln.startswith("error: ") or ": error: " in ln), lines[-1] if lines else "")
    clean = done.returncode == 2 and "Traceback" not in done.stderr and bool(message) and "error: " in message
    return {"seconds": seconds, "cpu_s": cpu, "rc": done.returncode, "clean": clean,
            "side_effects": sorted({c[0] for c in changed}), "message": message}


def floor_seconds(repeat: int) -> float:
    """`python -c pass`: what any command costs before it does anything."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="runs per case; the median is reported (default 1)")
    ap.add_argument("--publish", action="store_true", help="write the JSON to bench/results/error_speed.json")
    a = ap.parse_args()
    floor = floor_seconds(max(3, a.repeat))
    print(f"{'python -c pass (floor)':48s} {floor:6.2f} s")
    results = []
    for name, argv, files in CASES:
        runs = [run_case(argv, files) for _ in range(a.repeat)]
        r = {**runs[-1], "case": name, "seconds": round(statistics.median(x["seconds"] for x in runs), 3),
             "cpu_s": round(statistics.median(x["cpu_s"] for x in runs), 3),
             "clean": all(x["clean"] for x in runs)}
        results.append(r)
        mark = "ok " if r["clean"] and not r["side_effects"] else "BAD"
        print(f"{mark} {name:44s} {r['seconds']:6.2f} s ({r['cpu_s']:5.2f} cpu)  rc {r['rc']}  {r['message'][:110]}"
              + (f"  side effects: {r['side_effects']}" if r["side_effects"] else ""))
    slowest = max(results, key=lambda r: r["seconds"])
    print(f"slowest: {slowest['case']} {slowest['seconds']:.2f} s (goal < {GOAL_S} s; floor {floor:.2f} s)")
    out = {"bench": "error_speed", "cases": len(results), "repeat": a.repeat, "python_floor_s": round(floor, 3),
           "load_average_1min": round(os.getloadavg()[0], 2), "max_cpu_s": max(r["cpu_s"] for r in results),
           "max_s": slowest["seconds"], "slowest": slowest["case"],
           "median_s": round(statistics.median(r["seconds"] for r in results), 3),
           "clean": sum(r["clean"] for r in results),
           "with_side_effects": sum(bool(r["side_effects"]) for r in results), "goal_s": GOAL_S,
           "goal_met": slowest["seconds"] < GOAL_S and all(r["clean"] and not r["side_effects"] for r in results),
           "per_case": {r["case"]: {"s": r["seconds"], "cpu_s": r["cpu_s"], "rc": r["rc"], "clean": r["clean"]}
                        for r in results}}
    line = json.dumps(out)
    if a.publish:
        path = Path(__file__).parent / "results" / "error_speed.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()

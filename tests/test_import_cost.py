"""Checking a config must not load the heavy libraries: a typo is reported in a second, not after torch loads.

One fresh interpreter (this test process has imported everything already) imports the config modules and the CLI,
parses every shipped run config and sweep file, then runs argument and config errors of several subcommands; after
each step it lists the heavy packages that step loaded. Nothing is timed here (bench/bad_inputs.py times it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "sklearn", "ray", "mlflow", "optuna", "matplotlib", "scipy", "pandas", "astropy", "h5py")

# Runs in the child: each step calls a function, then notes the heavy packages it loaded; the last line printed is
# {step: [those packages]}. A CLI step must also exit 2 with an `error:` line.
CHILD = r"""
import contextlib, io, json, sys
from pathlib import Path

heavy, tmp = set(sys.argv[1].split(",")), Path(sys.argv[2])
loaded, report = set(), {}

def step(name, fn):
    fn()
    now = {m.split(".")[0] for m in sys.modules} & heavy
    report[name] = sorted(now - loaded)
    loaded.update(now)

def cli(*argv):
    from sweeps.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(list(argv))
    assert rc == 2 and err.getvalue().startswith("error: "), (argv, rc, err.getvalue())

def parse_shipped():
    from sweeps.config import load_sweep
    from uda_core.config import load_config
    for f in sorted(Path("configs").glob("*.yaml")):
        load_config(f)
    for f in sorted(Path("sweeps/configs").glob("*.yaml")):
        load_sweep(f)

(tmp / "typo_sweep.yaml").write_text("name: t\nrun: {method: {name: dance}}\nsearch: {num_trails: 3}\n")
(tmp / "bad_run.yaml").write_text("train: {steps: many}\n")
step("import sweeps.config, uda_core.config, sweeps.cli",
     lambda: [__import__(m) for m in ("sweeps.config", "uda_core.config", "sweeps.cli")])
step("parse configs/*.yaml and sweeps/configs/*.yaml", parse_shipped)
step("run: typo in the sweep file", lambda: cli("run", str(tmp / "typo_sweep.yaml")))
step("train: wrong type in the run config", lambda: cli("train", str(tmp / "bad_run.yaml"), "--out", str(tmp / "out")))
for command in ("status", "resume", "promote"):
    step(f"{command}: no such sweep", lambda c=command: cli(c, "nope", "--storage", str(tmp / "sweeps")))
step("data generate: unknown survey", lambda: cli("data", "generate", "--source", "nope", "--out", str(tmp / "gen")))
step("data show: not a data set", lambda: cli("data", "show", str(tmp)))
store = f"sqlite:///{tmp / 'nowhere' / 'mlflow.db'}"
step("rollback: no MLflow store", lambda: cli("rollback", "m", "--tracking-uri", store))
step("predict: missing input", lambda: cli("predict", "models:/m@champion", str(tmp / "in"), "--out",
                                           str(tmp / "c.parquet"), "--tracking-uri", store))
unlabelled = sys.argv[3]  # an imported-like data set whose target has no labels
(tmp / "oracle_run.yaml").write_text(f"data: {{path: {unlabelled}}}\nmethod: {{name: target_oracle}}\n")
(tmp / "oracle_sweep.yaml").write_text(f"name: o\nrun: {{data: {{path: {unlabelled}}}, method: {{name: dance}}}}\n"
                                       "baselines: [target_oracle]\n")
step("train: target_oracle on an unlabelled target",
     lambda: cli("train", str(tmp / "oracle_run.yaml"), "--out", str(tmp / "out")))
step("run: target_oracle baseline on an unlabelled target", lambda: cli("run", str(tmp / "oracle_sweep.yaml")))
print(json.dumps(report))
"""


def test_config_errors_load_no_heavy_library(tmp_path, tiny_unlabelled_folder):
    done = subprocess.run([sys.executable, "-c", CHILD, ",".join(HEAVY), str(tmp_path), str(tiny_unlabelled_folder)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert len(report) == 13
    assert {step: mods for step, mods in report.items() if mods} == {}
    inputs = ["bad_run.yaml", "oracle_run.yaml", "oracle_sweep.yaml", "typo_sweep.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == inputs  # nothing created


def test_method_names_and_params_match_the_classes():
    # The light table validates configs; the classes train. A method added to one only would break a sweep late.
    from uda_core.methods import METHODS, PARAMS
    from uda_core.methods.params import TRAINS_ON_TARGET_LABELS

    assert {name: cls.Params for name, cls in METHODS.items()} == PARAMS
    assert {name for name, cls in METHODS.items() if cls.target_labels != "few_shot"} == TRAINS_ON_TARGET_LABELS

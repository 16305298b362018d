"""Sweep files are validated whole, with the dotted key named, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sweeps.config import DEFAULT_OBJECTIVE, load_sweep, parse_sweep
from uda_core.errors import ConfigError

CONFIGS = sorted((Path(__file__).parents[1] / "sweeps" / "configs").glob("*.yaml"))


def _sweep(**over):
    raw = {"name": "s", "run": {"method": {"name": "dance"}}}
    raw.update(over)
    return raw


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_sweeps_are_valid(path):
    sweep = load_sweep(path)
    assert sweep.name == path.stem
    assert not sweep.objective.oracle  # shipped sweeps select without target labels


def test_shipped_sweeps_exist():
    assert {p.stem for p in CONFIGS} >= {"quickstart", "decals_to_sdss", "lsst_y10_to_y1", "deepastro3"}


def test_default_objective_is_the_one_the_selection_benchmark_settled_on():
    from sweeps.selection_benchmark import load_benchmark, measured_default

    # bench/selection.py --publish rewrites the measurement; the default must follow it (and stay label-free)
    assert DEFAULT_OBJECTIVE == measured_default()
    measured = load_benchmark()["criteria"]
    assert {"source_val/acc", "label_free/dev", "label_free/agreement", "label_free/combined"} <= set(measured)
    assert all(not c.startswith("oracle/") for c in measured)


def test_defaults():
    s = parse_sweep(_sweep(), "s.yaml")
    assert s.objective.metrics == [DEFAULT_OBJECTIVE] and not DEFAULT_OBJECTIVE.startswith("oracle/")
    assert s.methods == ["dance"]  # the run's method; search.space lists several to search the method too
    # ASHA's first rung: the first evaluation from 3/4 of the budget (bench/search_efficiency's rank correlation)
    assert (s.run.train.steps, s.run.train.eval_every, s.grace_period) == (1500, 250, 1250)
    assert s.scheduler.reduction_factor == 3
    assert s.search.n_startup == 3  # 8 trials: TPE takes over after 3 random ones (Optuna's 10 would never)
    assert parse_sweep(_sweep(search={"num_trials": 200}), "s.yaml").search.n_startup == 10


def test_multi_objective_modes_default_to_each_metric():
    s = parse_sweep(_sweep(objective={"metric": ["label_free/entropy", "source_val/acc"]}), "s.yaml")
    assert s.objective.modes == ["min", "max"]


def test_oracle_objective_is_marked():
    s = parse_sweep(_sweep(objective={"metric": "oracle/target_test/h_score"}), "s.yaml")
    assert s.objective.oracle


@pytest.mark.parametrize("raw, key", [
    (_sweep(serach={}), "serach: unknown key"),
    (_sweep(run={"method": {"name": "dance"}, "train": {"stpes": 3}}), "run.train.stpes"),
    (_sweep(run={"train": {"steps": "many"}}), "run.train.steps"),
    (_sweep(objective={"metric": "target_acc"}), "objective.*not a metric a sweep can optimise"),
    (_sweep(objective={"metric": ["label_free/im"], "mode": ["max", "min"]}), "objective.*one mode per metric"),
    (_sweep(resources={"gpus_per_trial": 0.3}), "resources.gpus_per_trial.*divide 1"),
    (_sweep(resources={"cpus_per_trial": 0}), "resources.cpus_per_trial"),
    (_sweep(scheduler={"grace_period": 100000}), "scheduler.grace_period"),
    (_sweep(scheduler={"reduction_factor": 1}), "scheduler.reduction_factor"),
    (_sweep(search={"space": "adabn"}), "search.space"),
    # one sweep over several methods (search_spaces/joint.py): each name a method, the run's among them, no oracle
    (_sweep(search={"space": ["adabn", "dnace"]}), r"search.space: 'dnace' is not a method \(did you mean 'dance'\?\); "
                                                   r"choose from \[.*'sphkmeans'.*\], a list of them, or 'all'"),
    (_sweep(search={"space": "dann"}), "search.space: 'dann' is not a method"),
    (_sweep(search={"space": []}), "search.space: give a method, a list of methods or 'all'"),
    (_sweep(search={"space": ["adabn", "adabn"]}), "search.space: each method once"),
    (_sweep(search={"space": ["adabn", "source_only"]}), "search.space: run.method.name='dance' is not among"),
    (_sweep(search={"space": ["dance", "target_oracle"]}), "search.space: 'target_oracle' trains on target labels"),
    (_sweep(search={"space": ["dance", "adabn"], "overrides": {"method.name": "adabn"}}),
     "search.overrides.method.name: the methods a sweep searches are set by search.space"),
    (_sweep(search={"space": ["dance", "adabn"], "overrides": {"method.params.c_rho": {"low": 0.5, "high": 2}}}),
     "search.overrides.method.params.c_rho"),  # a method's range is still checked against that method
    (_sweep(objective={"metric": "source_val/votes/nll"}), "objective.metric.*set run.model.vote_head: true"),
    (_sweep(search={"overrides": {"method.params.c_rho": {"low": 0.5, "high": 2}}}),
     "search.overrides.method.params.c_rho"),
    (_sweep(baselines=["dann"]), "baselines.*not a method"),
    (_sweep(name="my sweep"), "name"),
    (_sweep(search={"num_trials": 0}), "search.num_trials"),
    ({"run": {}}, "name: Field required"),
    (_sweep(tracking={"uri": "mlruns"}), "tracking.uri"),
    (_sweep(storage={"path": "s3://bucket/sweeps"}), "storage.path"),
    (_sweep(run={"train": {"device": "cuda"}}), "gpus_per_trial"),
    (_sweep(search={"overrides": {"optim.lr": None}}), "search.overrides.optim.lr: empty override"),
])
def test_bad_sweep_files_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key):
        parse_sweep(raw, "s.yaml")


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such sweep file"):
        load_sweep(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_sweep(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_sweep(listy)


def test_several_methods_in_one_sweep():
    from search_spaces import search_space

    s = parse_sweep(_sweep(search={"space": ["adabn", "dance"], "overrides": {"method.params.eta_nc": 0.1}}), "s.yaml")
    assert s.methods == ["adabn", "dance"]
    space = search_space(s.methods).with_overrides(s.search.overrides, s.run.model_dump())
    assert space.keys[0] == "method.name" and space.param("method.name").choices == ("adabn", "dance")
    assert space.param("method.params.eta_nc").fixed == 0.1  # an override of one method's parameter still applies
    every = parse_sweep(_sweep(search={"space": "all"}), "s.yaml").methods
    assert "dance" in every and "adabn" in every
    assert not {"target_oracle", "open_set_oracle"} & set(every)  # a sweep never chooses a method that uses labels

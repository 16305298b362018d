"""Search spaces: one per method, names that are run-config keys, overrides checked against the run config."""

from __future__ import annotations

import optuna
import pytest

from search_spaces import SPACES, apply_params, get_space
from uda_core.config import RunConfig, build_config
from uda_core.errors import ConfigError
from uda_core.methods import METHODS

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _base(method: str) -> dict:
    return RunConfig(method={"name": method}).model_dump()


def test_every_method_has_a_space():
    assert set(SPACES) == set(METHODS)
    with pytest.raises(ConfigError, match="choose one of"):
        get_space("dann")


@pytest.mark.parametrize("name", sorted(SPACES))
def test_suggestions_are_valid_run_configs(name):
    """Every sampled point is a config the core accepts (catches a range wider than a method allows)."""
    space, base = get_space(name), _base(name)
    space.check(base)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        constants = space(trial)
        cfg = build_config(apply_params(base, {**trial.params, **constants}))
        assert cfg.method.name == name
        study.tell(trial, 0.0)


def test_dance_space_covers_loss_weights_thresholds_and_clusters():
    keys = set(get_space("dance").keys)
    for k in ("method.params.eta_nc", "method.params.eta_es", "method.params.c_rho", "method.params.c_m",
              "method.params.memory_momentum", "model.temperature", "optim.lr", "optim.weight_decay",
              "optim.batch_size", "model.width", "eval.unknown_clusters"):
        assert k in keys
    assert get_space("dance").param("method.params.eta_nc").log


def test_conditional_parameter_only_when_switched_on():
    space = get_space("adabn")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        t = study.ask()
        space(t)
        seen.add(t.params["optim.optimizer"])
        assert ("optim.momentum" in t.params) == (t.params["optim.optimizer"] == "sgd")
        study.tell(t, 0.0)
    assert seen == {"adamw", "sgd"}


def test_overrides_narrow_widen_and_fix():
    base = _base("dance")
    space = get_space("dance").with_overrides(
        {"optim.lr": {"low": 1e-3, "high": 5e-3}, "method.params.eta_nc": {"low": 1e-4, "high": 2.0},
         "model.width": 16, "optim.batch_size": {"choices": [32]}}, base)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        t = study.ask()
        constants = space(t)
        assert constants == {"model.width": 16}
        assert "model.width" not in t.params
        assert 1e-3 <= t.params["optim.lr"] <= 5e-3
        assert 1e-4 <= t.params["method.params.eta_nc"] <= 2.0  # widened beyond the default 0.5
        assert t.params["optim.batch_size"] == 32
        study.tell(t, 0.0)


@pytest.mark.parametrize("override, message", [
    ({"method.params.c_rho": {"low": 0.1, "high": 1.5}}, "method.params.c_rho"),  # the method accepts c_rho < 1
    ({"optim.lr": {"low": 0.0, "high": 0.1}}, "log-scale range needs low > 0"),
    ({"optim.lr": {"low": 0.1, "high": 0.01}}, "low < high must hold"),
    ({"optim.batch_size": {"choices": [1]}}, "optim.batch_size"),  # the core needs batch >= 2
    ({"optim.batch_size": {"low": 8, "high": 64}}, "takes \\['choices'\\]"),
    ({"method.params.eta": 0.1}, "not a parameter of the 'dance' space"),
    ({"model.width": 100000}, "model.width"),
])
def test_bad_overrides_are_rejected_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        get_space("dance").with_overrides(override, _base("dance"))


def test_default_point_is_the_base_config_and_respects_overrides():
    base = _base("dance")
    base["optim"]["lr"] = 0.004
    space = get_space("dance")
    point = space.default_point(base)
    assert point["optim.lr"] == 0.004
    assert point["method.params.eta_nc"] == 0.05  # the method's own default
    assert "optim.momentum" not in point  # adamw: the conditional parameter is off
    narrowed = space.with_overrides({"optim.lr": {"low": 1e-2, "high": 2e-2}}, base)
    assert "optim.lr" not in narrowed.default_point(base)  # outside the asked range: Optuna samples it


def test_default_point_is_enqueued_first():
    base = _base("dance")
    space = get_space("dance")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, group=True))
    study.enqueue_trial(space.default_point(base))
    t = study.ask()
    space(t)
    assert t.params["method.params.c_rho"] == 0.5 and t.params["optim.lr"] == 0.002

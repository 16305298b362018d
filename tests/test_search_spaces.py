"""Search spaces: one per method, names that are run-config keys, overrides checked against the run config."""

from __future__ import annotations

import optuna
import pytest

from search_spaces import SPACES, apply_params, get_space, search_space
from uda_core.config import RunConfig, build_config
from uda_core.errors import ConfigError
from uda_core.methods import PARAMS, METHODS
from uda_core.methods.params import TRAINS_ON_TARGET_LABELS

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _base(method: str) -> dict:
    return RunConfig(method={"name": method}).model_dump()


def test_every_method_has_a_space():
    assert set(SPACES) == set(PARAMS) == set(METHODS)
    # ... and every method a sweep may choose fits one joint space (`search.space: all`): no key two ways
    label_free = [m for m in PARAMS if m not in TRAINS_ON_TARGET_LABELS]
    search_space(label_free).check(_base(label_free[0]))
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


# One sweep over several methods: the method is a categorical, each method's parameters conditional on it.

def test_joint_space_suggests_only_the_chosen_methods_parameters():
    space, base = search_space(["adabn", "dance", "sphkmeans"]), _base("dance")
    base["method"]["params"] = {"eta_nc": 0.1}  # the run's own method settings: DANCE's only
    space.check(base)
    own = {m: {k for k in get_space(m).keys if k.startswith("method.params.")} for m in ("dance", "sphkmeans")}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    chosen = set()
    for _ in range(30):
        t = study.ask()
        space(t)
        method = t.params["method.name"]
        chosen.add(method)
        assert {k for k in t.params if k.startswith("method.params.")} == own.get(method, set())
        assert {"optim.lr", "model.temperature", "eval.unknown_clusters"} <= set(t.params)  # shared, once
        cfg = build_config(apply_params(base, t.params))  # DANCE's base settings never reach another method
        assert cfg.method.name == method
        study.tell(t, 0.0)
    assert chosen == {"adabn", "dance", "sphkmeans"}


def test_joint_space_overrides_default_point_and_tpe():
    base = _base("dance")
    space = search_space(["dance", "adabn"]).with_overrides(
        {"method.params.eta_nc": {"low": 0.1, "high": 0.2}, "method.params.c_m": 0.3, "optim.lr": 0.01}, base)
    point = space.default_point(base)  # the run's method and its settings, inside the overridden ranges
    assert point["method.name"] == "dance" and point["method.params.c_rho"] == 0.5
    assert not {"method.params.eta_nc", "method.params.c_m", "optim.lr"} & set(point)
    # The run's method may be any of the searched ones: a DANCE parameter is checked as DANCE's, not AdaBN's
    search_space(["adabn", "dance"]).with_overrides({"method.params.eta_nc": {"low": 0.1, "high": 2.0}},
                                                    _base("adabn")).check(_base("adabn"))
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, group=True,
                                                                   n_startup_trials=3))
    study.enqueue_trial(space.default_point(base))
    for i in range(12):
        t = study.ask()
        constants = space(t)
        dance = t.params["method.name"] == "dance"
        assert constants == ({"optim.lr": 0.01, "method.params.c_m": 0.3} if dance else {"optim.lr": 0.01})
        assert not dance or 0.1 <= t.params["method.params.eta_nc"] <= 0.2
        study.tell(t, float(i % 3))
    with pytest.raises(ConfigError, match=r"search.overrides.method.params.c_rho: .*c_rho"):
        search_space(["adabn", "dance"]).with_overrides({"method.params.c_rho": {"low": 0.5, "high": 1.5}}, base)
    with pytest.raises(ConfigError, match="not a parameter of the 'adabn\\+source_only' space"):
        search_space(["adabn", "source_only"]).with_overrides({"method.params.eta_nc": 0.1}, _base("adabn"))


def test_joint_space_names_a_key_two_methods_search_by_method():
    """sphkmeans' and contrastive's `tau` are different parameters: one Optuna distribution each, one override each."""
    base = _base("sphkmeans")
    space = search_space(["sphkmeans", "contrastive", "adabn"])
    assert {"method.params.tau:sphkmeans", "method.params.tau:contrastive"} <= set(space.keys)
    assert "method.params.tau" not in space.keys and "method.params.warmup_frac" in space.keys  # only where needed
    space = space.with_overrides({"method.params.tau:contrastive": {"low": 0.3, "high": 0.4}}, base)
    with pytest.raises(ConfigError, match="method.params.tau: not a parameter.*method.params.tau:sphkmeans"):
        search_space(["sphkmeans", "contrastive"]).with_overrides({"method.params.tau": 0.1}, base)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    chosen = set()
    for _ in range(20):
        t = study.ask()
        space(t)
        method = t.params["method.name"]
        chosen.add(method)
        taus = [k for k in t.params if k.startswith("method.params.tau")]
        assert taus == ([f"method.params.tau:{method}"] if method != "adabn" else [])
        cfg = build_config(apply_params(base, t.params))  # the name sets the method's own key
        if method == "contrastive":
            assert 0.3 <= cfg.method.params["tau"] <= 0.4
        study.tell(t, 0.0)
    assert chosen == {"sphkmeans", "contrastive", "adabn"}

"""Config validation: every bad key or value fails at load time with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from uda_core.config import build_config, load_config
from uda_core.errors import ConfigError
from uda_core.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"optim": {"lrr": 0.1}}, "optim.lrr"),
        ({"train": {"steps": "many"}}, "train.steps"),
        ({"train": {"steps": 10, "eval_every": 20}}, "eval_every"),
        ({"optim": {"lr": -1}}, "optim.lr"),
        ({"data": {"source": "hubble"}}, "source='hubble'"),
        ({"data": {"size": "huge"}}, "data.size"),
        ({"method": {"name": "dann"}}, "unknown method 'dann'"),
        ({"method": {"name": "dance", "params": {"c_rho": 1.5}}}, "params.c_rho"),
        ({"method": {"name": "dance", "params": {"eta": 0.05}}}, "params.eta"),
        ({"method": {"name": "source_only", "params": {"eta_nc": 0.05}}}, "params.eta_nc"),
        ({"eval": {"reject_score": "entropy2"}}, "eval.reject_score"),
        ({"eval": {"reject_score": "energy", "reject_threshold": "rho"}}, "reject_score: entropy"),
        ({"data": {"label_noise": 0.7}}, "data.label_noise"),
        ({"eval": {"select_by": "oracle/target_test/h_score"}}, "eval.select_by"),
        ({"eval": {"select_by": "source_val/votes/nll", "select_mode": "min"}}, "set model.vote_head: true"),
        ({"model": {"vote_head": True}, "eval": {"select_by": "source_val/votes/nll"}}, "set select_mode: min"),
        ({"method": {"name": "sphkmeans", "params": {"warmup_frac": 0.0}}}, "params.warmup_frac"),
    ],
)
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError) as e:
        build_config(raw)
    assert key in str(e.value)


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model:\n  widht: 32\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: model.widht: unknown key"):
        load_config(p)
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", sorted(METHODS))  # every method ships an example config
def test_shipped_example_configs_load(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.method.name == name
    assert cfg.data.source == "decals" and cfg.data.target == "sdss"


def test_method_params_defaults_come_from_the_method():
    cfg = build_config({"method": {"name": "dance"}})
    p = cfg.method.parsed()
    assert (p.eta_nc, p.eta_es, p.c_rho, p.c_m) == (0.05, 0.05, 0.5, 0.5)

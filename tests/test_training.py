"""The training loop and the method contract on the tiny data set."""

from __future__ import annotations

import math

import pytest
import torch

from uda_core.data.dataset import load_dataset
from uda_core.methods import METHODS, PARAMS, Method
from uda_core.models import DomainBatchNorm2d, TARGET
from uda_core.train import CHECKPOINT_FILE, TrainingDiverged, _augment, _labelled_target_rows, train


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return load_dataset(tiny_folder)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name, tiny_config, tiny, tmp_path):
    cfg = tiny_config(name)
    reports = []
    last = train(cfg, lambda ev, ck: reports.append((ev, ck)), tmp_path, data=tiny)
    assert [ev.step for ev, _ in reports] == [2, 4]
    m = last.metrics
    for key in ("source_val/acc", "source_test/acc_shared", "label_free/snd", "label_free/entropy", "label_free/im",
                "label_free/dev", "label_free/agreement", "label_free/combined", "label_free/bnm",
                "label_free/class_ami", "label_free/devn", "label_free/emulated_acc", "label_free/estimated_h",
                "label_free/estimated_h_floored", "label_free/combined_unknown",
                "oracle/target_test/acc_shared", "oracle/target_test/h_score",
                "oracle/target_test/auroc/entropy",
                "oracle/target_test/auroc/knn_distance", "oracle/target_test/h_score/entropy_rho", "train/source_ce",
                "oracle/target_test/auroc_by_class/lens", "oracle/target_test/auroc_by_class/artifact"):
        assert key in m and math.isfinite(m[key]), key
    parts = (m["source_val/acc"], m["label_free/im"] / math.log(tiny.num_known), m["label_free/agreement"],
             m["label_free/estimated_h_floored"])
    assert m["label_free/combined_unknown"] == pytest.approx(sum(parts) / 4)
    assert (reports[-1][1] / CHECKPOINT_FILE).exists()
    conf = last.confusion["oracle_target_test"]
    assert len(conf["rows"]) == 8 and conf["cols"][-1] == "unknown"
    assert sum(map(sum, conf["matrix"])) == len(tiny["target/test"])


def test_only_oracle_metrics_depend_on_target_labels(tiny_config, tiny, tmp_path):
    """Shuffling every target label may change oracle/ metrics only: the rest must be truly label-free."""
    import copy

    from uda_core.evaluate import evaluate
    from uda_core.methods import get_method
    from uda_core.models import build_model

    cfg = tiny_config("dance")
    torch.manual_seed(0)
    model = build_model(cfg.model, tiny.in_channels, tiny.num_known)
    method = get_method("dance")(cfg.method.parsed(), model, tiny.num_known, len(tiny["target/train"]))
    shuffled = copy.copy(tiny)
    shuffled.splits = dict(tiny.splits)
    g = torch.Generator().manual_seed(1)
    for key in ("target/train", "target/test"):
        s = copy.copy(tiny[key])
        s.y = s.y[torch.randperm(len(s.y), generator=g)]
        shuffled.splits[key] = s
    a = evaluate(model, method, tiny, cfg, 0).metrics
    b = evaluate(model, method, shuffled, cfg, 0).metrics
    assert set(a) == set(b)
    label_free = [k for k in a if not k.startswith("oracle/")]
    assert "label_free/snd" in label_free and "source_val/acc" in label_free
    for k in label_free:
        assert a[k] == pytest.approx(b[k], nan_ok=True), k
    assert any(a[k] != pytest.approx(b[k], nan_ok=True) for k in a if k.startswith("oracle/"))


def test_resume_with_a_changed_model_is_refused(tiny_config, tiny, tmp_path):
    from uda_core.errors import ConfigError

    train(tiny_config("dance"), lambda *a: None, tmp_path, data=tiny)
    wider = tiny_config("dance", model={"width": 12})
    with pytest.raises(ConfigError, match=r"model.width: 8 -> 12"):
        train(wider, lambda *a: None, tmp_path / "again", resume_from=tmp_path / "checkpoints/step_0000004", data=tiny)


def test_target_batches_never_repeat_a_stamp():
    from uda_core.train import _EpochSampler

    s = _EpochSampler(50, torch.Generator().manual_seed(0))
    seen = []
    for _ in range(20):
        b = s(16)
        assert len(set(b.tolist())) == 16
        seen += b.tolist()
    assert set(seen) == set(range(50))


def test_resnet_backbone_trains(tiny_config, tiny, tmp_path):
    cfg = tiny_config("dance", model={"backbone": "resnet", "depth": 1, "domain_bn": True})
    last = train(cfg, lambda *a: None, tmp_path, data=tiny)
    assert math.isfinite(last.metrics["train/loss"])
    state = torch.load(tmp_path / "checkpoints/step_0000004" / CHECKPOINT_FILE, weights_only=True)["model"]
    assert any("skip" in k for k in state)  # residual shortcuts exist


def test_dance_uses_target_and_adds_its_losses(tiny_config, tiny, tmp_path):
    last = train(tiny_config("dance"), lambda *a: None, tmp_path, data=tiny)
    assert {"train/nc", "train/es"} <= set(last.metrics)


def test_resume_continues_bit_for_bit(tiny_config, tiny, tmp_path):
    cfg = tiny_config("dance")
    train(cfg, lambda *a: None, tmp_path / "full", data=tiny)
    full = torch.load(tmp_path / "full/checkpoints/step_0000004" / CHECKPOINT_FILE, weights_only=True)
    half = tmp_path / "full/checkpoints/step_0000002"
    train(cfg, lambda *a: None, tmp_path / "resumed", resume_from=half, data=tiny)
    resumed = torch.load(tmp_path / "resumed/checkpoints/step_0000004" / CHECKPOINT_FILE, weights_only=True)
    assert int(resumed["step"]) == 4
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert torch.equal(full["method"]["memory"], resumed["method"]["memory"])


def test_adabn_reestimates_target_statistics(tiny_config, tiny, tmp_path):
    reports = []
    train(tiny_config("adabn"), lambda ev, ck: reports.append(ck), tmp_path, data=tiny)
    state = torch.load(reports[-1] / CHECKPOINT_FILE, weights_only=True)["model"]
    src = [v for k, v in state.items() if k.endswith("bns.0.running_mean")]
    tgt = [v for k, v in state.items() if k.endswith("bns.1.running_mean")]
    assert src and len(src) == len(tgt)
    assert not torch.allclose(src[0], tgt[0])  # target statistics were measured on target stamps


def test_source_only_has_plain_batch_norm(tiny_config, tiny, tmp_path):
    reports = []
    train(tiny_config("source_only"), lambda ev, ck: reports.append(ck), tmp_path, data=tiny)
    state = torch.load(reports[-1] / CHECKPOINT_FILE, weights_only=True)["model"]
    assert not any("bns." in k for k in state)


def test_non_finite_loss_stops_with_a_clear_error(tiny_config, tiny, tmp_path, monkeypatch):
    class Exploding(Method):
        name = "exploding"

        def losses(self, batch):
            out = super().losses(batch)
            out["source_ce"] = out["source_ce"] * float("nan")
            return out

    monkeypatch.setitem(METHODS, "exploding", Exploding)
    monkeypatch.setitem(PARAMS, "exploding", Exploding.Params)
    cfg = tiny_config("source_only")
    cfg.method.name = "exploding"
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 0"):
        train(cfg, lambda *a: None, tmp_path, data=tiny)


def test_few_shot_rows_are_per_shared_class(tiny_config, tiny):
    cfg = tiny_config("source_only", data={"few_shot_per_class": 3})
    rows = _labelled_target_rows(cfg, tiny, "few_shot")
    labels = tiny["target/train"].y[rows]
    assert len(rows) == 3 * len(tiny.shared)
    assert sorted(set(labels.tolist())) == tiny.shared
    oracle = _labelled_target_rows(cfg, tiny, "all")
    assert (tiny["target/train"].y[oracle] < tiny.num_known).all()


def test_few_shot_adds_a_target_loss(tiny_config, tiny, tmp_path):
    last = train(tiny_config("dance", data={"few_shot_per_class": 2}), lambda *a: None, tmp_path, data=tiny)
    assert "train/target_ce" in last.metrics


def test_augment_is_a_dihedral_transform_per_stamp():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    out = _augment(x, torch.Generator().manual_seed(0))
    for i in range(2):
        candidates = [torch.rot90(f, k, dims=(-2, -1)) for f in (x[i], x[i].flip(-1)) for k in range(4)]
        assert any(torch.equal(out[i], c) for c in candidates)


def test_domain_bn_switches_statistics():
    bn = DomainBatchNorm2d(3)
    bn.bns[1].running_mean.fill_(5.0)
    bn.eval()
    x = torch.zeros(1, 3, 2, 2)
    assert bn(x).mean() == 0
    bn.domain = TARGET
    assert bn(x).mean() < -1


def test_dihedral_views_are_the_eight_symmetries():
    from uda_core.evaluate import dihedral

    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)  # no symmetry of its own
    views = [dihedral(x, v) for v in range(8)]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert torch.equal(views[0], x) and torch.equal(views[4], x.flip(3))
    assert torch.equal(dihedral(views[1], 3), x)  # four quarter turns close the group


def test_a_checkpoint_written_before_a_new_config_key_still_resumes(tiny_config, tmp_path):
    """A key added since (model.vote_head) compares as its default; a real change is still refused."""
    import json

    from uda_core.errors import ConfigError
    from uda_core.train import _check_resumable

    cfg = tiny_config()
    raw = json.loads(cfg.model_dump_json())
    del raw["model"]["vote_head"], raw["train"]["vote_weight"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    _check_resumable(cfg, tmp_path)
    raw["model"]["width"] = 24
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="model.width: 24 -> 8"):
        _check_resumable(cfg, tmp_path)

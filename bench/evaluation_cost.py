"""What the selection criteria cost inside one evaluation: DEV (domain classifier + risk) and augmentation agreement
(7 extra views of up to `eval.agreement_max_samples` target stamps) as a share of the whole `evaluate()` call.

Same process, same model, medians of `--repeats`: a ratio, not a timing to compare across machines.

    .venv/bin/python bench/evaluation_cost.py [--size small] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--root", default=str(ROOT / "data"))
    args = ap.parse_args()

    import numpy as np
    import torch

    from uda_core.config import build_config, read_yaml
    from uda_core.evaluate import dihedral, evaluate, predict
    from uda_core.evaluation import metrics as M
    from uda_core.evaluation.validators import augmentation_agreement, dev_risk, domain_weights
    from uda_core.methods import get_method
    from uda_core.models import SOURCE, TARGET, build_model
    from uda_core.train import autocast_factory, load_data

    raw = read_yaml(ROOT / "sweeps" / "configs" / "quickstart.yaml")["run"]
    raw["data"].update(size=args.size, root=args.root)
    cfg = build_config(raw)
    data = load_data(cfg, progress=False)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.in_channels, data.num_known).to(memory_format=torch.channels_last)
    method = get_method(cfg.method.name)(cfg.method.parsed(), model, data.num_known, len(data["target/train"]))
    autocast = autocast_factory(cfg.train.precision, torch.device("cpu"))
    ev = cfg.eval

    evaluate(model, method, data, cfg, 0, autocast)  # warm-up: first-call kernel selection is not the steady state
    total = median_time(lambda: evaluate(model, method, data, cfg, 0, autocast), args.repeats)
    _, src = predict(model, data["source/train"].x[: ev.max_source_features], SOURCE, autocast=autocast)
    lg_val, f_val = predict(model, data["source/val"].x, SOURCE, autocast=autocast)
    lg_tt, f_tt = predict(model, data["target/train"].x, TARGET, autocast=autocast)
    errors = (lg_val.argmax(1) != data["source/val"].y.numpy()).astype(np.float64)
    dev = median_time(lambda: dev_risk(domain_weights(src, f_tt, f_val, max_samples=ev.dev_max_samples), errors),
                      args.repeats)
    x = data["target/train"].x[: ev.agreement_max_samples]

    def agreement():
        views = [M.softmax(predict(model, dihedral(x, v), TARGET, autocast=autocast)[0]) for v in range(1, 8)]
        return augmentation_agreement(M.softmax(lg_tt[: len(x)]), np.stack(views))

    agree = median_time(agreement, args.repeats)
    print(f"evaluate(): {total:.2f} s  (size {args.size}, {len(data['target/train'])} target stamps)")
    print(f"  DEV: {dev:.2f} s ({dev / total:.0%})   agreement: {agree:.2f} s ({agree / total:.0%})")
    print(json.dumps({"benchmark": "evaluation_cost", "size": args.size, "evaluate_s": round(total, 3),
                      "dev_share": round(dev / total, 3), "agreement_share": round(agree / total, 3)}))


if __name__ == "__main__":
    main()

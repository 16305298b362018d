"""The selection analysis (regret, Spearman across checkpoints and trials) against a naive reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from uda_core.evaluation.selection import (
    CRITERIA,
    ORACLE,
    NOISE_FLOOR,
    RANDOM,
    load_records,
    plot_criteria_vs_oracle,
    plot_selection,
    selection_summary,
    summary_table,
    sweep_selection,
)


def _sweep(rng, trials=6, ckpts=5) -> pd.DataFrame:
    rows = []
    for t in range(trials):
        for c in range(ckpts):
            acc = rng.uniform(0.3, 0.9)
            rows.append({"trial": t, "oracle/target_test/acc_shared": acc,
                         "oracle/target_test/h_score": acc - 0.2 + rng.normal(0, 0.05),
                         "source_val/acc": rng.uniform(0.3, 1.0)})
    df = pd.DataFrame(rows)
    df["label_free/im"] = df["oracle/target_test/acc_shared"] + rng.normal(0, 0.1, len(df))   # noisy but right
    # lower is better: exactly backwards
    df["label_free/entropy"] = df["oracle/target_test/acc_shared"]
    df["label_free/snd"] = rng.normal(size=len(df))
    return df


def _naive(df: pd.DataFrame, crit: str, sign: int, oracle: str) -> dict:
    best, best_j = -math.inf, None
    for j in range(len(df)):
        v = sign * df[crit].iloc[j]
        if df["source_val/acc"].iloc[j] >= 0.5 and v > best:
            best, best_j = v, j
    regret = df[oracle].max() - df[oracle].iloc[best_j]
    rhos, picks = [], []
    for _, g in df.groupby("trial"):
        rhos.append(spearmanr(sign * g[crit], g[oracle]).statistic)
        ok = g[g["source_val/acc"] >= 0.5]
        if len(ok):
            k = (sign * ok[crit]).to_numpy().argmax()
            picks.append((sign * ok[crit].iloc[k], ok[oracle].iloc[k]))
    return {"regret": regret, "rho_ckpt": np.mean(rhos), "rho_trial": spearmanr(*zip(*picks)).statistic}


@pytest.mark.parametrize("crit", ["label_free/im", "label_free/entropy", "label_free/snd", "source_val/acc"])
def test_sweep_selection_matches_naive(crit):
    df = _sweep(np.random.default_rng(0))
    got = sweep_selection(df).set_index("criterion").loc[crit]
    for short, col in ORACLE.items():
        ref = _naive(df, crit, CRITERIA[crit], col)
        assert got[f"regret_{short}"] == pytest.approx(ref["regret"], abs=1e-12)
        assert got[f"rho_ckpt_{short}"] == pytest.approx(ref["rho_ckpt"], abs=1e-12)
        assert got[f"rho_trial_{short}"] == pytest.approx(ref["rho_trial"], abs=1e-12)


def test_perfect_and_backwards_criteria_and_the_guard():
    df = _sweep(np.random.default_rng(1))
    df["source_val/acc"] = 0.9
    df["label_free/im"] = df["oracle/target_test/acc_shared"]      # perfect ranking
    df.loc[df["oracle/target_test/acc_shared"].idxmax(), "source_val/acc"] = 0.1  # ... but the best fails the guard
    s = sweep_selection(df).set_index("criterion")
    assert s.loc["label_free/im", "rho_ckpt_acc"] == pytest.approx(1.0)
    assert s.loc["label_free/entropy", "rho_ckpt_acc"] == pytest.approx(-1.0)
    acc = df["oracle/target_test/acc_shared"]
    second = acc.sort_values().iloc[-2]
    assert s.loc["label_free/im", "regret_acc"] == pytest.approx(acc.max() - second)  # guard made it take the second
    passed = df["source_val/acc"] >= 0.5
    assert s.loc[RANDOM, "regret_acc"] == pytest.approx(acc.max() - acc[passed].mean())
    assert NOISE_FLOOR not in s.index  # only with labels of an independent split
    df["oracle/target_train/acc_shared"] = acc + 0.01         # a second labelled sample ranking the same way
    df["oracle/target_train/h_score"] = -df["oracle/target_test/h_score"]  # ... and one ranking backwards
    s = sweep_selection(df).set_index("criterion")
    assert s.loc[NOISE_FLOOR, "regret_acc"] == pytest.approx(acc.max() - second)
    assert s.loc[NOISE_FLOOR, "rho_ckpt_h"] == pytest.approx(-1.0)


def test_summary_over_sweeps_records_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    for pair in ("a:b", "c:d"):
        for method in ("adabn", "dance"):
            for seed in (0, 1, 2):
                df = _sweep(rng, trials=4, ckpts=3)
                lines = [json.dumps({"pair": pair, "seed": seed, "method": method, "trial": int(r.trial), "params": {},
                                     "metrics": {k: v for k, v in r.items() if k != "trial"}})
                         for _, r in df.iterrows()]
                (tmp_path / f"{pair[0]}_{method}_{seed}.jsonl").write_text("\n".join(lines) + "\n")
    records = load_records(sorted(tmp_path.glob("*.jsonl")))
    assert len(records) == 2 * 2 * 3 * 12 and records.groupby(["pair", "method", "seed", "trial"]).size().eq(3).all()
    summary = selection_summary(records)
    one = records[(records.pair == "a:b") & (records.method == "dance")]
    per_seed = [sweep_selection(g.reset_index(drop=True)).set_index("criterion").loc["label_free/im", "regret_acc"]
                for _, g in one.groupby("seed")]
    row = summary[(summary.pair == "a:b") & (summary.method == "dance")
                  & (summary.criterion == "label_free/im")].iloc[0]
    assert row.n == 3 and row.regret_acc == pytest.approx(np.mean(per_seed))
    assert row.regret_acc_se == pytest.approx(np.std(per_seed, ddof=1) / math.sqrt(3))
    overall = summary[(summary.pair == "all") & (summary.criterion == "label_free/im")].iloc[0]
    assert overall.n == 12
    table = summary_table(summary)
    assert "a -> b" in table and "`label_free/im` |" in table and RANDOM in table
    # a criterion that only later sweeps record says on how many sweeps its figures rest
    late = records.assign(**{"label_free/im": records["label_free/im"].where(records.seed == 2)})
    assert "`label_free/im` (only the 4 sweeps that record it) |" in summary_table(selection_summary(late))
    plot_selection(summary).savefig(tmp_path / "s.png")
    plot_criteria_vs_oracle(one[one.seed == 0]).savefig(tmp_path / "c.png")
    assert (tmp_path / "s.png").stat().st_size > 10_000 and (tmp_path / "c.png").stat().st_size > 10_000


def test_criteria_vs_oracle_text_is_large():
    import matplotlib.pyplot as plt

    fig = plot_criteria_vs_oracle(_sweep(np.random.default_rng(0), trials=6, ckpts=4))
    ax = fig.axes[0]
    assert ax.title.get_fontsize() >= 12 and ax.xaxis.label.get_fontsize() >= 11
    assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 10 and fig.get_suptitle()
    assert fig.get_size_inches()[0] <= 14  # shown ~900 px wide: fewer inches, larger text
    plt.close(fig)


def test_combinations_are_the_mean_of_their_unit_scaled_parts():
    from uda_core.evaluation.selection import COMBINATIONS, add_combinations

    df = pd.DataFrame({"label_free/emulated_acc": [0.8, 0.4], "label_free/estimated_h": [0.2, 0.6],
                       "label_free/im": [math.log(6), 0.0], "label_free/agreement": [0.5, 1.0]})
    out = add_combinations(df, num_known=6)
    assert list(out["mean of emulated_acc, estimated_h"]) == pytest.approx([0.5, 0.5])
    assert list(out["mean of emulated_acc, im / ln K, agreement"]) == pytest.approx([(0.8 + 1 + 0.5) / 3, 1.4 / 3])
    with_h = add_combinations(df.assign(**{"source_val/acc": [0.9, 0.7], "label_free/estimated_h_floored": [0.1, 0.5]}),
                              num_known=6)
    assert list(with_h["label_free/combined_unknown"]) == pytest.approx(
        [(0.9 + 1 + 0.5 + 0.1) / 4, (0.7 + 0 + 1 + 0.5) / 4])
    logged = with_h.assign(**{"label_free/combined_unknown": [0.42, np.nan]})  # logged by newer records only
    assert list(add_combinations(logged, 6)["label_free/combined_unknown"]) == pytest.approx([0.42, 2.2 / 4])
    assert set(COMBINATIONS) <= set(CRITERIA)
    assert "mean of emulated_acc, estimated_h" not in add_combinations(df[["label_free/im"]], 6)  # parts missing
    s = sweep_selection(out.assign(trial=[0, 1], **{"source_val/acc": 0.9, "oracle/target_test/acc_shared": [0.7, 0.6],
                                                   "oracle/target_test/h_score": [0.1, 0.3]})).set_index("criterion")
    assert s.loc["mean of emulated_acc, im / ln K, agreement", "regret_h"] == pytest.approx(0.2)  # picks trial 0


def test_the_default_moves_only_when_the_criterion_chosen_on_one_seed_also_wins_on_the_others():
    from uda_core.evaluation.selection import choose_default, paired_regret

    def sweeps(regrets):  # {(seed, criterion): regret}: one sweep per seed, accuracy and H-score regret alike
        return pd.DataFrame([{"pair": "p", "method": "all", "seed": seed, "criterion": crit, "regret_acc": r,
                              "regret_h": r, "regret": r} for (seed, crit), r in regrets.items()])

    lucky = sweeps({(0, "a"): 0.01, (0, "now"): 0.10, (0, "b"): 0.05,
                    (1, "a"): 0.20, (1, "now"): 0.10, (1, "b"): 0.0, (2, "a"): 0.30, (2, "now"): 0.12})
    d = choose_default(lucky, "now", ["a", "b", "now"])
    assert (d["chosen"], d["criterion"], d["chosen_on_seed"]) == ("a", "now", 0)  # chosen on seed 0, lost after
    assert d["held_out"]["n"] == 2 and d["held_out"]["diff"] == pytest.approx((0.10 + 0.18) / 2)
    good = sweeps({(0, "a"): 0.01, (0, "now"): 0.10, (1, "a"): 0.02, (1, "now"): 0.10})
    assert choose_default(good, "now", ["a", "now"])["criterion"] == "a"
    assert choose_default(good, "now", ["now"])["criterion"] == "now"  # only candidates are chosen
    p = paired_regret(lucky, "b", "now")  # b is missing on seed 2: compared on seeds 0-1 only
    assert p["n"] == 2 and p["diff"] == pytest.approx((-0.05 - 0.10) / 2) and p["b_acc"] == pytest.approx(0.10)
    # a candidate missing from one first-seed sweep is not chosen on the other alone
    partial = pd.concat([good, sweeps({(0, "late"): 0.0}).assign(pair="q"), sweeps({(0, "now"): 0.2}).assign(pair="q"),
                         sweeps({(0, "a"): 0.1}).assign(pair="q")])
    assert choose_default(partial, "now", ["a", "late", "now"])["chosen"] == "a"
    # held out on fewer sweeps than the default: no switch, however good
    thin = pd.concat([good, sweeps({(1, "now"): 0.1}).assign(pair="q")])
    assert choose_default(thin, "now", ["a", "now"])["criterion"] == "now"
    one_seed = choose_default(good[good.seed == 0], "now", ["a", "now"])  # nothing held out: the default stays
    assert one_seed["criterion"] == "now" and one_seed["held_out"]["n"] == 0
    with pytest.raises(ValueError, match="appears twice"):
        paired_regret(pd.concat([good, good]), "a", "now")


def test_objective_candidates_are_the_metrics_a_sweep_can_optimise():
    from uda_core.evaluation.names import OBJECTIVES
    from uda_core.evaluation.selection import COMBINATIONS, OBJECTIVE_CANDIDATES

    assert set(OBJECTIVE_CANDIDATES) <= set(OBJECTIVES)
    assert not (set(COMBINATIONS) - set(OBJECTIVES)) & set(OBJECTIVE_CANDIDATES)  # a combination only once logged
    assert {"label_free/combined", "label_free/estimated_h_floored", "label_free/combined_unknown",
            "source_val/acc"} <= set(OBJECTIVE_CANDIDATES)


def test_h_against_rejection_draws_the_guarded_checkpoints_and_flagging_at_random():
    import matplotlib.pyplot as plt

    from uda_core.evaluation.selection import plot_h_against_rejection

    df = _sweep(np.random.default_rng(1), trials=4, ckpts=3).assign(pair="a:b", seed=0)
    df["trained"] = np.where(df.trial % 2, "adabn", "dance")
    df["label_free/rejected_frac"] = np.linspace(0, 0.5, len(df))
    fig = plot_h_against_rejection(df)
    ax = fig.axes[0]
    guarded = int((df["source_val/acc"] >= 0.5).sum())
    assert sum(len(c.get_offsets()) for c in ax.collections) == guarded  # one dot per guarded checkpoint
    (curve,) = ax.lines
    x, y = curve.get_data()
    acc = df.loc[df["source_val/acc"] >= 0.5, "oracle/target_test/acc_shared"].median()
    k = 30  # flagging 30% at random: known side acc * 0.7, unknown side 0.3
    assert x[k] == pytest.approx(0.3) and y[k] == pytest.approx(2 * acc * 0.7 * 0.3 / (acc * 0.7 + 0.3))
    plt.close(fig)

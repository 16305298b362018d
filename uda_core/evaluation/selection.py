"""How well label-free criteria select models, measured against target labels (ORACLE: simulated pairs only).

Input is a table of evaluations (one row per trial x checkpoint) with the criteria and the oracle scores. A
criterion selects as a sweep does: among checkpoints whose source validation accuracy passes the guard, the one
with the best criterion value. Per sweep (a group of trials) this module reports

* regret: the oracle-best score of any checkpoint minus the oracle score of the selected one (0 is perfect);
* Spearman across checkpoints: within each trial, criterion vs oracle over its checkpoints, averaged over trials;
* Spearman across trials: each trial represented by the checkpoint the criterion picks in it (how a sweep ranks
  trials), criterion vs oracle over trials.

Two reference rows: "random", the expected regret of promoting a random guarded checkpoint (the bar to clear), and
the noise floor, selection by the labels of the independent target/train split (the regret test-set noise alone
causes: with a few hundred test stamps the oracle-best checkpoint is partly the luckiest one).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from . import names as N  # noqa: E402
from .validators import LABEL_FREE_CRITERIA  # noqa: E402

__all__ = ["CRITERIA", "COMBINATIONS", "add_combinations", "ORACLE", "GUARD", "RANDOM", "NOISE_FLOOR", "load_records",
           "sweep_selection", "per_sweep_selection", "paired_regret", "OBJECTIVE_CANDIDATES", "choose_default",
           "selection_summary", "summary_table", "plot_selection", "plot_criteria_vs_oracle",
           "plot_h_against_rejection"]

# Combinations of recorded criteria measured beside them (bench/selection adds their columns; higher is better),
# the first two written down before the bench-size records of issue 15 were analysed. None is logged by a sweep, so
# none can become the default objective (OBJECTIVE_CANDIDATES) unless it is first made a metric.
COMBINATIONS: dict[str, tuple[str, ...]] = {
    "mean of emulated_acc, estimated_h": (N.label_free("emulated_acc"), N.label_free("estimated_h")),
    "mean of emulated_acc, im / ln K, agreement": (N.label_free("emulated_acc"), N.label_free("im"),
                                                    N.label_free("agreement")),
    # Written down after seeds 0-2 (where `estimated_h` failed by rewarding rules that reject almost nothing) and
    # before seed 3: the default's three parts and the floored H estimate, for a criterion that sees the unknowns.
    # Since made a metric (validators.combined_unknown_score); computed here for the records that predate it.
    N.label_free("combined_unknown"): (
        N.SOURCE_VAL_ACC, N.label_free("im"), N.label_free("agreement"), N.label_free("estimated_h_floored")),
}
# Every criterion an evaluation reports, and the combinations, with its direction (+1: higher is better).
CRITERIA: dict[str, int] = {N.SOURCE_VAL_ACC: 1,
                            **{c.metric: 1 if c.higher_is_better else -1 for c in LABEL_FREE_CRITERIA},
                            **{name: 1 for name in COMBINATIONS}}
ORACLE = {"acc": N.ORACLE_ACC, "h": N.ORACLE_H}
GUARD = (N.SOURCE_VAL_ACC, 0.5)  # the sweep's default objective.min_source_val_acc
RANDOM = "random checkpoint: expected"
# Selecting on the labels of target/train (an independent labelled sample) and scoring on target/test: the regret
# that the test set's own noise causes, which no criterion can beat on average.
NOISE_FLOOR = "noise floor: ORACLE on target/train"
NOISE_FLOOR_BY = {"acc": N.ORACLE_TRAIN_ACC, "h": N.ORACLE_TRAIN_H}


def load_records(paths: Iterable[Path]) -> pd.DataFrame:
    """bench/selection.py records (JSON lines) as one row per evaluation: pair, seed, method (the sweep's: one method,
    or "all"), trained (the trial's method), trial, step, metrics. A trial's closing line (no metrics) is skipped."""
    rows = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            try:
                r = json.loads(line) if line.strip() else {}
            except json.JSONDecodeError:
                continue  # a line torn by a killed writer
            if "metrics" in r:
                rows.append({k: r[k] for k in ("pair", "seed", "method", "trial")} | {"trained": r.get("trained",
                                                                                                   r["method"])}
                            | {k: (np.nan if v is None else v) for k, v in r["metrics"].items()})
    df = pd.DataFrame(rows)
    df["step"] = df.groupby(["pair", "seed", "method", "trial"]).cumcount()  # checkpoint index within the trial
    return df


def add_combinations(records: pd.DataFrame, num_known: int) -> pd.DataFrame:
    """`records` with a column per COMBINATIONS entry whose parts it holds: the parts' mean, IM divided by ln K
    (its largest value) so that every part lies in [0, 1]."""
    out = records.copy()
    for name, parts in COMBINATIONS.items():
        if all(p in out for p in parts):
            cols = [out[p] / np.log(num_known) if p == N.label_free("im") else out[p] for p in parts]
            mean = sum(cols) / len(cols)
            out[name] = out[name].fillna(mean) if name in out else mean  # a logged metric wins where recorded
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return np.nan
    return float(spearmanr(a[ok], b[ok]).statistic)


def sweep_selection(df: pd.DataFrame, trial_col: str = "trial", guard: tuple[str, float] = GUARD) -> pd.DataFrame:
    """Per criterion (and the two baselines) for ONE sweep's evaluations: regret_{acc,h}, rho_ckpt_{acc,h},
    rho_trial_{acc,h}, and the selected trial."""
    passed = df[guard[0]].to_numpy() >= guard[1]
    trials = list(df.groupby(trial_col).indices.values())
    selectors = {crit: (sign, {short: crit for short in ORACLE}) for crit, sign in CRITERIA.items() if crit in df}
    if all(col in df for col in NOISE_FLOOR_BY.values()):
        selectors[NOISE_FLOOR] = (1, NOISE_FLOOR_BY)
    out = []
    for name, (sign, by) in selectors.items():
        row = {"criterion": name}
        for short, col in ORACLE.items():
            oracle = df[col].to_numpy(dtype=float)
            score = sign * df[by[short]].to_numpy(dtype=float)
            ok = passed & np.isfinite(score)
            sel = int(np.flatnonzero(ok)[np.argmax(score[ok])]) if ok.any() else None
            row["selected_trial"] = None if sel is None else df[trial_col].iloc[sel]
            row[f"regret_{short}"] = np.nan if sel is None else float(np.nanmax(oracle) - oracle[sel])
            per_trial = [_spearman(score[idx], oracle[idx]) for idx in trials]
            row[f"rho_ckpt_{short}"] = float(np.nanmean(per_trial)) if np.isfinite(per_trial).any() else np.nan
            picks = []  # per trial: (criterion, oracle) at the checkpoint the criterion picks in that trial
            for idx in trials:
                idx = idx[ok[idx]]
                if len(idx):
                    j = idx[np.argmax(score[idx])]
                    picks.append((score[j], oracle[j]))
            row[f"rho_trial_{short}"] = _spearman(*map(np.array, zip(*picks))) if len(picks) >= 3 else np.nan
        out.append(row)
    base = {"criterion": RANDOM, "selected_trial": None}
    for short, col in ORACLE.items():
        oracle = df[col].to_numpy(dtype=float)
        base[f"regret_{short}"] = float(np.nanmax(oracle) - np.nanmean(oracle[passed])) if passed.any() else np.nan
    out.append(base)
    return pd.DataFrame(out)


_STATS = ("regret_acc", "regret_h", "rho_ckpt_acc", "rho_ckpt_h", "rho_trial_acc", "rho_trial_h")


def per_sweep_selection(records: pd.DataFrame) -> pd.DataFrame:
    """sweep_selection for every sweep (pair x method x seed), one row per sweep and criterion; `regret` is the mean
    of the accuracy and H-score regrets."""
    per_sweep = []
    for (pair, method, seed), df in records.groupby(["pair", "method", "seed"]):
        s = sweep_selection(df.reset_index(drop=True))
        s["pair"], s["method"], s["seed"] = pair, method, seed
        per_sweep.append(s)
    ps = pd.concat(per_sweep, ignore_index=True)
    ps["regret"] = (ps["regret_acc"] + ps["regret_h"]) / 2
    return ps


def paired_regret(per_sweep: pd.DataFrame, a: str, b: str) -> dict[str, float]:
    """Criteria `a` and `b` on the sweeps where both selected a checkpoint (a criterion recorded only by later
    sweeps is compared on those): n, each one's mean regret_acc and regret_h, and the mean and standard error of
    the paired difference of `regret` (a - b; negative: `a` loses less). A sweep listed twice is an error."""
    out: dict[str, float] = {"n": 0} | {k: np.nan for k in ("a_acc", "a_h", "b_acc", "b_h", "diff", "diff_se")}
    rows = per_sweep[per_sweep["criterion"].isin([a, b])].set_index(["pair", "method", "seed", "criterion"])
    if rows.index.has_duplicates:
        raise ValueError("paired_regret: a (pair, method, seed, criterion) appears twice (records read twice?)")
    if not {a, b} <= set(rows.index.get_level_values("criterion")):
        return out
    wide = rows[["regret_acc", "regret_h", "regret"]].unstack("criterion")
    both = wide["regret"][[a, b]].notna().all(axis=1).to_numpy()
    if not both.any():
        return out
    diff = (wide["regret"][a] - wide["regret"][b]).to_numpy()[both]
    out["n"] = int(both.sum())
    for tag, crit in (("a", a), ("b", b)):
        for short in ("acc", "h"):
            out[f"{tag}_{short}"] = float(wide[f"regret_{short}"][crit].to_numpy()[both].mean())
    out["diff"] = float(diff.mean())
    out["diff_se"] = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else np.nan
    return out


# What choose_default may pick: the criteria a sweep can optimise (logged metrics), so no COMBINATIONS entry.
OBJECTIVE_CANDIDATES: tuple[str, ...] = tuple(c for c in CRITERIA if c in N.OBJECTIVES)


def choose_default(per_sweep: pd.DataFrame, current: str, candidates: Iterable[str] = OBJECTIVE_CANDIDATES) -> dict:
    """The protocol that moves a sweep's default objective. Among `candidates` that selected a checkpoint in every
    one of the first seed's sweeps, the one with the lowest mean regret there is chosen (the step written down
    before the bench-size records were read); it replaces `current` only if its paired mean regret on the other
    seeds' sweeps is also lower, over every held-out sweep `current` selected in (the step written down in session
    10, after seeds 0-2 had kept the default). So a criterion first recorded by later sweeps cannot be chosen
    until the first seed's sweeps are re-run with it. With one seed, nothing is held out and `current` stays.
    Returns the resulting default ("criterion"), the one chosen, the seed it was chosen on and the held-out
    comparison (paired_regret, chosen - current)."""
    first = int(per_sweep["seed"].min())
    on_first = per_sweep[(per_sweep["seed"] == first) & per_sweep["criterion"].isin(list(candidates))]
    n_first = per_sweep[per_sweep["seed"] == first].groupby(["pair", "method"]).ngroups
    by_crit = on_first.groupby("criterion")["regret"]
    means = by_crit.mean()[by_crit.count() == n_first]  # count: the sweeps it selected in
    chosen = means.idxmin() if len(means) else current
    rest = per_sweep[per_sweep["seed"] != first]
    held_out = paired_regret(rest, chosen, current)
    current_sweeps = int(rest.loc[rest["criterion"] == current, "regret"].notna().sum())
    switch = chosen != current and held_out["n"] == current_sweeps > 0 and held_out["diff"] < 0
    return {"criterion": chosen if switch else current, "chosen": chosen, "chosen_on_seed": first,
            "held_out": held_out}


def selection_summary(records: pd.DataFrame, per_sweep: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean and standard error over sweeps (pair x method x seed) per criterion, for each pair and method, each
    pair (both methods) and "all"; `regret` is the mean of the accuracy and H-score regrets. `per_sweep`:
    per_sweep_selection(records), when already computed."""
    ps = per_sweep_selection(records) if per_sweep is None else per_sweep
    groups = [(["pair", "method"], ps), (["pair"], ps.assign(method="both")),
              ([], ps.assign(pair="all", method="both"))]
    rows = []
    for keys, frame in groups:
        for key, g in (frame.groupby(keys + ["criterion"], sort=False) if keys
                       else frame.groupby(["criterion"], sort=False)):
            key = key if isinstance(key, tuple) else (key,)
            r = dict(zip(keys + ["criterion"], key)) | {"pair": g["pair"].iloc[0],
                                                        "method": g["method"].iloc[0],
                                                        "n": int(g["regret"].notna().sum())}  # sweeps it selected in
            for stat in _STATS + ("regret",):
                v = g[stat].to_numpy(dtype=float)
                v = v[np.isfinite(v)]
                r[stat] = float(v.mean()) if len(v) else np.nan
                r[f"{stat}_se"] = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else np.nan
            rows.append(r)
    return pd.DataFrame(rows)


def _pm(mean: float, se: float, fmt: str = "{:.3f}") -> str:
    if not np.isfinite(mean):
        return "-"
    return fmt.format(mean) + ("" if not np.isfinite(se) else " ± " + fmt.replace("+", "").format(se))


def summary_table(summary: pd.DataFrame) -> str:
    """Markdown: regret (accuracy / H-score) per pair and overall, then Spearman over all sweeps."""
    both = summary[summary["method"] == "both"]
    pairs = [p for p in both["pair"].unique() if p != "all"] + ["all"]
    order = list(CRITERIA) + [RANDOM, NOISE_FLOOR]
    everywhere = both.loc[both["pair"] == "all", "n"].max()
    lines = ["| criterion | " + " | ".join(f"{p.replace(':', ' -> ')}: regret acc / H" for p in pairs) + " |",
             "|---" * (len(pairs) + 1) + "|"]
    for crit in order:
        cells = []
        for p in pairs:
            r = both[(both["pair"] == p) & (both["criterion"] == crit)]
            cells.append("-" if r.empty else f"{_pm(r.regret_acc.iloc[0], r.regret_acc_se.iloc[0])} / "
                                             f"{_pm(r.regret_h.iloc[0], r.regret_h_se.iloc[0])}")
        n = both.loc[(both["pair"] == "all") & (both["criterion"] == crit), "n"]
        only = f" (only the {n.iloc[0]} sweeps that record it)" if len(n) and n.iloc[0] < everywhere else ""
        lines.append(f"| `{crit}`{only} | " + " | ".join(cells) + " |")
    lines += ["", "| criterion (all sweeps) | Spearman across checkpoints: acc / H | Spearman across trials: acc / H |",
              "|---|---|---|"]
    for crit in list(CRITERIA) + [NOISE_FLOOR]:
        r = both[(both["pair"] == "all") & (both["criterion"] == crit)]
        if not r.empty:
            r = r.iloc[0]
            lines.append(f"| `{crit}` | {_pm(r.rho_ckpt_acc, r.rho_ckpt_acc_se, '{:+.2f}')} "
                         f"/ {_pm(r.rho_ckpt_h, r.rho_ckpt_h_se, '{:+.2f}')} "
                         f"| {_pm(r.rho_trial_acc, r.rho_trial_acc_se, '{:+.2f}')} "
                         f"/ {_pm(r.rho_trial_h, r.rho_trial_h_se, '{:+.2f}')} |")
    return "\n".join(lines)


def plot_selection(summary: pd.DataFrame):
    """Regret (accuracy and H-score) per criterion and pair, and Spearman across trials; error bars are SEs."""
    both = summary[summary["method"] == "both"]
    pairs = list(both["pair"].unique())
    crits = [c for c in list(CRITERIA) + [RANDOM, NOISE_FLOOR] if c in set(both["criterion"])]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    width = 0.8 / len(pairs)
    y = np.arange(len(crits))
    for ax, stat, label in ((axes[0], "regret_acc", "regret, target accuracy (ORACLE)"),
                            (axes[1], "regret_h", "regret, target H-score (ORACLE)"),
                            (axes[2], "rho_trial_h", "Spearman across trials vs H-score (ORACLE)")):
        for i, p in enumerate(pairs):
            g = both[both["pair"] == p].set_index("criterion").reindex(crits)
            ax.barh(y + i * width, g[stat], width, xerr=g[f"{stat}_se"], label=p.replace(":", " -> "))
        ax.set_yticks(y + width * (len(pairs) - 1) / 2, crits if ax is axes[0] else [""] * len(crits))
        ax.set_xlabel(label)
        ax.axvline(0, color="k", lw=0.5)
        ax.invert_yaxis()
    axes[0].axvline(0.02, color="r", ls="--", lw=0.8)
    axes[1].axvline(0.02, color="r", ls="--", lw=0.8)
    axes[2].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the bars fill the axes
    fig.suptitle("Label-free model selection against target labels (ORACLE): lower regret is better; "
                 "red: the 2-point goal")
    fig.tight_layout()
    return fig


def plot_criteria_vs_oracle(df: pd.DataFrame, oracle: str = ORACLE["h"], trial_col: str = "trial",
                            guard: tuple[str, float] = GUARD):
    """One panel per criterion: its value against the ORACLE score at every checkpoint, one colour per trial, the
    checkpoint it would promote circled. Sized to be read in MLflow's artifact viewer (about 900 px wide): few
    inches per panel, large fonts, the same oracle scale in every panel."""
    crits = [c for c in CRITERIA if c in df and np.isfinite(df[c].to_numpy(dtype=float)).any()]
    sel = sweep_selection(df.reset_index(drop=True), trial_col, guard).set_index("criterion")
    cols = min(4, len(crits))
    nrows = -(-len(crits) // cols)
    width = max(3.4 * cols, 7.0)  # inches; at least wide enough for the suptitle in two or three lines
    fig, axes = plt.subplots(nrows, cols, figsize=(width, 3.3 * nrows + 0.9), squeeze=False, sharey=True)
    codes = pd.factorize(df[trial_col])[0]
    passed = df[guard[0]].to_numpy() >= guard[1]
    for k, (ax, crit) in enumerate(zip(axes.flat, crits)):
        x, yv = df[crit].to_numpy(dtype=float), df[oracle].to_numpy(dtype=float)
        ax.scatter(x[passed], yv[passed], c=codes[passed], cmap="tab20", s=22)
        ax.scatter(x[~passed], yv[~passed], c="lightgrey", s=16, label="fails source guard")
        score = CRITERIA[crit] * x
        ok = passed & np.isfinite(score)
        if ok.any():
            j = np.flatnonzero(ok)[np.argmax(score[ok])]
            ax.scatter([x[j]], [yv[j]], s=180, facecolors="none", edgecolors="r", lw=2)
        r = sel.loc[crit]
        short = "h" if oracle == ORACLE["h"] else "acc"
        ax.set_title(f"{crit}\nrho ckpt {r[f'rho_ckpt_{short}']:+.2f}, regret {r[f'regret_{short}']:.3f}", fontsize=13)
        ax.set_xlabel("lower is better" if CRITERIA[crit] < 0 else "higher is better", fontsize=12)
        if k % cols == 0:
            ax.set_ylabel(oracle, fontsize=12)
        ax.tick_params(labelsize=11)
        ax.tick_params(axis="y", labelleft=True)
    for ax in list(axes.flat)[len(crits):]:
        ax.axis("off")
    fig.suptitle(textwrap.fill("Label-free criteria against the ORACLE target score, every checkpoint, one colour per "
                               "trial (red circle: the checkpoint the criterion selects; grey: fails the source guard)",
                               width=int(7.5 * width)), fontsize=15)
    fig.tight_layout()
    return fig


def plot_h_against_rejection(records: pd.DataFrame, guard: tuple[str, float] = GUARD):
    """ORACLE H-score against the share of the target each guarded checkpoint's rule flags (label-free), one colour
    per method, beside the H-score of a rule that flags the same share at random (known side: the median shared-class
    accuracy times the share kept; unknown side: the share flagged). Where the points follow that curve, H-score
    measures how much a rule flags more than how well."""
    df = records[records[guard[0]] >= guard[1]]
    fig, ax = plt.subplots(figsize=(9.5, 5.5))
    for method, g in df.groupby("trained"):
        ax.scatter(g[N.label_free("rejected_frac")], g[ORACLE["h"]], s=14, alpha=0.7, label=method)
    r = np.linspace(0, 1, 101)
    acc = float(np.nanmedian(df[ORACLE["acc"]]))
    ax.plot(r, 2 * acc * (1 - r) * r / np.maximum(acc * (1 - r) + r, 1e-12), "k--",
            label=f"flagging at random (accuracy {acc:.2f})")
    ax.set_xlabel("share of the target flagged unknown (label_free/rejected_frac)")
    ax.set_ylabel("H-score on target/test (ORACLE)")
    ax.set_title(textwrap.fill(f"{len(df)} checkpoints of {df.groupby(['pair', 'seed']).ngroups} sweeps that pass "
                               "the source guard", 70), fontsize=11)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig

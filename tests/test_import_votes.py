"""`uda-sweep data import --source-votes/--target-votes`: Galaxy Zoo DECaLS vote tables joined to cutouts by id,
loaded as Split.votes, classes taken from the votes, and every bad vote table refused before a folder exists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import write_fits_cutouts
from sweeps.cli import main
from uda_core.data.dataset import SPLITS, load_dataset
from uda_core.data.importer import SKIPPED, DomainInput, ImportSpec, import_dataset
from uda_core.data.population import draw_population
from uda_core.data.store import read_manifest
from uda_core.data.surveys import get_survey
from uda_core.data.vote_sim import simulate_votes
from uda_core.errors import ConfigError, DataError
from uda_core.votes import GZ_DECALS

TREE = GZ_DECALS
CLASSES = {"E": "elliptical", "S": "spiral", "M": "merger"}


def _stamps(n: int, px: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:px, :px] - (px - 1) / 2
    blob = np.exp(-(x**2 + y**2) / (2 * (px / 8) ** 2))
    return (rng.normal(0, 0.01, (n, 3, px, px)) + blob * rng.uniform(0.5, 2, (n, 3, 1, 1))).astype(np.float32)


def _votes(ids, values, seed: int) -> pd.DataFrame:
    """GZ DECaLS vote counts that follow the tree (the simulator's), spirals mostly featured."""
    classes = [CLASSES[v] for v in values]
    params = draw_population(np.random.default_rng(seed), classes, get_survey("decals"), 16.0)
    counts = simulate_votes(params, get_survey("decals"), np.random.default_rng(seed + 1))
    return pd.DataFrame(counts, columns=TREE.columns).assign(objid=list(ids))[["objid", *TREE.columns]]


def _with_totals(table: pd.DataFrame, suffix: str = "") -> pd.DataFrame:
    """As the GZ DECaLS catalogues: `{question}{suffix}_{answer}` counts and `{question}{suffix}_total-votes`."""
    out = table[["objid"]].copy()
    for q, s in zip(TREE.questions, TREE.slices):
        cols = TREE.columns[s]
        for c in cols:
            out[c.replace(f"{q.name}_", f"{q.name}{suffix}_", 1)] = table[c]
        out[f"{q.name}{suffix}_total-votes"] = table[cols].sum(axis=1)
    return out


@pytest.fixture
def inputs(tmp_path):
    """24 labelled FITS source cutouts and 10 target ones (16 px), with vote tables for both; the source's as a
    GZ DECaLS CSV with totals and 5 rows of galaxies without cutouts, the target's as Parquet with -dr5 names."""
    src_ids, tgt_ids = [f"src{i:03d}" for i in range(24)], [f"tgt{i:03d}" for i in range(10)]
    values = [list(CLASSES)[i % 3] for i in range(24)]
    write_fits_cutouts(tmp_path / "decals", src_ids, _stamps(24, 16, 0), 0.262)
    write_fits_cutouts(tmp_path / "sdss", tgt_ids, _stamps(10, 16, 1), 0.262)
    pd.DataFrame({"objid": src_ids, "morph": values}).to_csv(tmp_path / "labels.csv", index=False)
    src_votes = _votes(src_ids + [f"other{i}" for i in range(5)], values + ["S"] * 5, 0)
    tgt_votes = _votes(tgt_ids, ["E", "S"] * 5, 10)
    _with_totals(src_votes).to_csv(tmp_path / "gz_decals_volunteers_5.csv", index=False)
    _with_totals(tgt_votes, "-dr5").to_parquet(tmp_path / "target_votes.parquet")
    return {"dir": tmp_path, "src_votes": src_votes.set_index("objid"), "tgt_votes": tgt_votes.set_index("objid"),
            "src_table": tmp_path / "gz_decals_volunteers_5.csv", "tgt_table": tmp_path / "target_votes.parquet"}


def _spec(inputs, source_votes="default", target_votes=None, labels="default", **kw) -> ImportSpec:
    d = inputs["dir"]
    source_votes = str(inputs["src_table"]) if source_votes == "default" else source_votes
    labels = str(d / "labels.csv") if labels == "default" else labels
    base = dict(source=DomainInput(str(d / "decals"), labels, votes=source_votes),
                target=DomainInput(str(d / "sdss"), votes=target_votes), id_column="objid", label_column="morph",
                class_map="E=elliptical,S=spiral,M=merger")
    base.update(kw)
    return ImportSpec(**base)


def test_votes_of_both_domains_load_as_split_votes(inputs, tmp_path):
    r = import_dataset(_spec(inputs, target_votes=str(inputs["tgt_table"])), tmp_path / "ds", progress=False)
    m = read_manifest(r.folder)
    assert m["votes"]["domains"] == ["source", "target"] and m["votes"]["target"] == "eval"
    assert m["target_labels"] == "none"  # votes are not class labels: the target stays unlabelled
    assert any("5 of 29 row(s) match no source cutout" in w for w in r.warnings)  # a catalogue bigger than the cutouts
    data = load_dataset(r.folder)
    assert data.vote_tree == TREE
    for key in SPLITS:
        split = data[key]
        table = inputs["src_votes" if key.startswith("source") else "tgt_votes"]
        np.testing.assert_array_equal(split.votes.numpy(), table.loc[split.catalogue["id"]].to_numpy(np.float32))
    # the class labels are the label table's, as without votes
    assert set(data["source/train"].catalogue["class_name"]) == set(CLASSES.values())


def test_source_votes_only_leave_the_target_without_votes(inputs, tmp_path):
    r = import_dataset(_spec(inputs), tmp_path / "ds", progress=False)
    assert read_manifest(r.folder)["votes"] == {"tree": TREE.to_dict(), "domains": ["source"]}
    cat = pq.read_table(r.folder / "catalogue.parquet").to_pandas()
    assert (cat.loc[cat["domain"] == "target", TREE.columns].to_numpy() == 0).all()
    data = load_dataset(r.folder)
    assert data["source/train"].votes is not None and data["target/train"].votes is None
    # no vote table: no vote columns, no "votes" in the manifest (as before)
    plain = import_dataset(_spec(inputs, source_votes=None), tmp_path / "plain", progress=False)
    assert "votes" not in read_manifest(plain.folder) and load_dataset(plain.folder).vote_tree is None


def test_classes_can_come_from_the_votes(inputs, tmp_path):
    r = import_dataset(_spec(inputs, labels=None, class_map=None), tmp_path / "ds", progress=False)
    cat = pq.read_table(r.folder / "catalogue.parquet").to_pandas()
    src = cat[cat["domain"] == "source"].set_index("id")
    first = inputs["src_votes"].loc[src.index, TREE.columns[TREE.slices[0]]].to_numpy()
    answers = np.array(TREE.questions[0].answers)
    assert (src["class_name"] == answers[first.argmax(1)]).all()
    assert set(read_manifest(r.folder)["task"]["class_names"]) <= set(answers)
    # a class map renames them (and may drop some)
    r2 = import_dataset(_spec(inputs, labels=None, class_map="smooth=elliptical,featured-or-disk=spiral,artifact="),
                        tmp_path / "mapped", progress=False)
    assert read_manifest(r2.folder)["task"]["class_names"][:2] == ["elliptical", "spiral"]
    with pytest.raises(ConfigError, match="--source-labels.*--source-votes"):
        import_dataset(_spec(inputs, labels=None, source_votes=None), tmp_path / "none", progress=False)


def _mend(inputs, change) -> Path:
    """A copy of the source vote table as `change(table)` returns it."""
    table = change(pd.read_csv(inputs["src_table"]))
    path = inputs["dir"] / "bad_votes.csv"
    table.to_csv(path, index=False)
    return path


def _set(column, value, row=3):
    def change(t):
        t[column] = t[column].astype(object)
        t.loc[row, column] = value
        return t
    return change


BAD = {
    "missing columns": (lambda t: t.drop(columns=["bar_weak", "merging_merger"]),
                        r"bad_votes\.csv: not a gz_decals vote table: no count column\(s\) \['bar_weak', "
                        r"'merging_merger'\]"),
    "negative": (_set("bar_no", -2), r"bad_votes\.csv: column 'bar_no' has 1 vote count\(s\) that are negative "
                                    r"\(e\.g\. '-2' for id 'src003'\)"),
    "non-integer": (_set("bulge-size_small", 2.5), r"bad_votes\.csv: column 'bulge-size_small' .* not a whole number"),
    "NaN": (_set("merging_none", np.nan), r"bad_votes\.csv: column 'merging_none' .* empty, NaN or not a number"),
    "total": (_set("has-spiral-arms_total-votes", 999),
              r"bad_votes\.csv: 'has-spiral-arms_total-votes' is not the sum of the has-spiral-arms answer counts "
              r"in 1 row\(s\) \(e\.g\. id 'src003'"),
    "duplicate": (_set("objid", "src000", row=4), r"bad_votes\.csv: 1 duplicate id"),
    "no id column": (lambda t: t.rename(columns={"objid": "iauname"}),
                     r"bad_votes\.csv: no id column 'objid'.*--id-column"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_vote_table_is_named_and_nothing_is_created(inputs, tmp_path, case, monkeypatch):
    change, message = BAD[case]
    bad = _mend(inputs, change)
    copied = []
    monkeypatch.setattr("uda_core.data.importer._Copier.run", lambda *a, **k: copied.append(1))
    with pytest.raises(DataError, match=message):
        import_dataset(_spec(inputs, source_votes=str(bad)), tmp_path / "ds", progress=False)
    assert not copied  # refused before any pixel is read
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.*"))
    # the same table as target votes is refused as well
    with pytest.raises(DataError, match=message):
        import_dataset(_spec(inputs, target_votes=str(bad)), tmp_path / "ds", progress=False)


def test_a_cutout_without_votes_stops_the_import_or_is_skipped(inputs, tmp_path):
    bad = _mend(inputs, lambda t: t.drop(index=[7]))  # src007's votes
    with pytest.raises(DataError,
                       match=r"id 'src007' has no row in the source vote table .*bad_votes\.csv.*--skip-bad"):
        import_dataset(_spec(inputs, source_votes=str(bad)), tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.*"))
    r = import_dataset(_spec(inputs, source_votes=str(bad), skip_bad=True), tmp_path / "ds", progress=False)
    assert r.skipped == 1
    skipped = pd.read_csv(r.folder / SKIPPED)
    assert skipped["id"].tolist() == ["src007"] and "vote table" in skipped["reason"][0]
    assert "src007" not in set(load_dataset(r.folder)["source/train"].catalogue["id"])


def test_cli_flags(inputs, tmp_path, capsys):
    d = inputs["dir"]
    args = ["data", "import", "--source", str(d / "decals"), "--source-votes", str(inputs["src_table"]),
            "--target", str(d / "sdss"), "--target-votes", str(inputs["tgt_table"]), "--id-column", "objid",
            "--workers", "1"]
    assert main(args + ["--out", str(tmp_path / "ds")]) == 0
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["votes"]["domains"] == ["source", "target"]
    assert manifest["surveys"]["target"]["votes"] == str(inputs["tgt_table"].resolve())
    capsys.readouterr()
    assert main(args[:3] + args[5:] + ["--out", str(tmp_path / "bad")]) == 2  # neither labels nor votes
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--source-votes" in err and not (tmp_path / "bad").exists()

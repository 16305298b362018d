"""Class labels for imported cutouts: a CSV or Parquet table joined to the cutouts by id.

Real catalogues do not use this project's class names (Galaxy10 uses 0-9, a visual catalogue "E", "Sa", ...), so
the label column's values are mapped to class names by a mapping the user gives; a value mapped to null drops its
rows (e.g. "uncertain"). Only the id and label columns are read.

Galaxy Zoo vote counts are the second kind of label table (`read_vote_table`): one integer count column per answer
of the decision tree, `{question}_{answer}` as the GZ DECaLS catalogues name them (zoobot's `-dr5` question suffix
accepted), returned under the tree's own column names.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..votes import GZ_DECALS, VoteTree

__all__ = ["read_class_labels", "read_vote_table", "parse_class_map", "CLASS_NAME"]

CLASS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")  # class names become metric and column names


def _read_columns(path: Path, columns: list[str] | None = None, select=None,
                  flags: str = "--id-column / --label-column") -> pd.DataFrame:
    """The table's `columns` (as strings for CSV/TSV); or, with `select(have) -> columns`, the ones it picks from
    the header (it raises its own DataError when some are missing)."""
    name = path.name.lower()
    sep = "\t" if name.endswith(".tsv") else ","
    if not name.endswith((".parquet", ".csv", ".csv.gz", ".tsv")):
        raise DataError(f"{path}: a label table must be .csv, .csv.gz, .tsv or .parquet")
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            have = pq.read_schema(path).names
        else:
            have = list(pd.read_csv(path, nrows=0, sep=sep).columns)
        if select is not None:
            columns = select(have)
        missing = [c for c in columns if c not in have]
        if missing:
            raise DataError(f"{path}: no column(s) {missing}; it has {have[:20]}; name the right ones with {flags}")
        if name.endswith(".parquet"):
            return pq.read_table(path, columns=columns).to_pandas()
        return pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False, sep=sep)
    except DataError:
        raise
    except Exception as e:  # pandas and pyarrow raise many types on damaged files
        raise DataError(f"{path}: cannot be read as a label table ({type(e).__name__}: {e}); re-write it") from None


_EMPTY = ["", "nan", "None"]  # what an empty cell reads as once a table's column is made text


def _check_rows(path: Path, ids: pd.Series, empty: pd.Series, what: str, id_column: str, one_per: str) -> None:
    """Every row has its id and value (`empty` marks those that do not), and no id repeats."""
    if empty.any():
        raise DataError(f"{path}: {int(empty.sum())} row(s) with an empty {what} (first at data row "
                        f"{int(empty.to_numpy().argmax()) + 1}); drop them or fill them in")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataError(f"{path}: {len(dup)} duplicate id(s) in {id_column!r}, e.g. {dup.iloc[:3].tolist()}; {one_per}")


def read_class_labels(path: str | Path, id_column: str, label_column: str) -> pd.Series:
    """id (str) -> label value (str), one per id; a missing file, column, empty value or duplicate id is an error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such label table (give a CSV or Parquet file with columns {id_column!r} and "
                        f"{label_column!r})")
    table = _read_columns(path, [id_column, label_column])
    ids, values = table[id_column].astype(str).str.strip(), table[label_column].astype(str).str.strip()
    _check_rows(path, ids, ids.eq("") | values.isin(_EMPTY), f"{id_column!r} or {label_column!r}", id_column,
                "one label per galaxy")
    return pd.Series(values.to_numpy(), index=ids.to_numpy(), name=label_column)


def _vote_columns(path: Path, id_column: str, tree: VoteTree, have: list[str]) -> tuple[dict, dict]:
    """{tree column: the table's column} for every answer, and {question: its total-votes column} where present.

    A question's answers may be named `{question}_{answer}` or, as zoobot writes GZ DECaLS DR5, with the question
    suffixed `-dr5`; all answers of one question must use one spelling.
    """
    if id_column not in have:
        raise DataError(f"{path}: no id column {id_column!r}; it has {have[:20]}; name it with --id-column")
    columns, totals, missing = {}, {}, []
    for q in tree.questions:
        for spelling in (q.name, f"{q.name}-dr5"):
            names = [f"{spelling}_{a}" for a in q.answers]
            if all(n in have for n in names):
                columns.update({f"{q.name}_{a}": n for a, n in zip(q.answers, names)})
                if f"{spelling}_total-votes" in have:
                    totals[q.name] = f"{spelling}_total-votes"
                break
        else:
            missing += [f"{q.name}_{a}" for a in q.answers if f"{q.name}_{a}" not in have
                        and f"{q.name}-dr5_{a}" not in have] or [f"{q.name}_{a}" for a in q.answers]
    if missing:
        raise DataError(f"{path}: not a {tree.name} vote table: no count column(s) {missing[:12]}"
                        f"{f' (and {len(missing) - 12} more)' if len(missing) > 12 else ''}; it needs one vote count "
                        "per answer, named {question}_{answer} (e.g. smooth-or-featured_smooth) or with the question "
                        "suffixed -dr5 (smooth-or-featured-dr5_smooth), as the Galaxy Zoo DECaLS catalogues write them")
    return columns, totals


def read_vote_table(path: str | Path, id_column: str, tree: VoteTree = GZ_DECALS) -> pd.DataFrame:
    """id (str) -> one int64 vote count per answer, columns `tree.columns`; only the id, answer and
    `{question}_total-votes` columns are read.

    An error (naming the file, the column and an example id) for a missing file or column, an empty or duplicate
    id, a count that is empty, NaN, negative or not a whole number, or a total-votes column that is not the sum of
    its question's answers.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such vote table (give a CSV, TSV or Parquet file with column {id_column!r} and "
                        "one vote count per Galaxy Zoo answer, e.g. smooth-or-featured_smooth)")
    found: dict = {}

    def select(have):
        found["columns"], found["totals"] = _vote_columns(path, id_column, tree, have)
        return [id_column, *found["columns"].values(), *found["totals"].values()]

    table = _read_columns(path, select=select, flags="--id-column")
    columns, totals = found["columns"], found["totals"]
    ids = table[id_column].astype(str).str.strip()
    _check_rows(path, ids, ids.isin(_EMPTY), repr(id_column), id_column, "one row of votes per galaxy")

    def counts(column: str) -> np.ndarray:
        raw = table[column]
        values = pd.to_numeric(raw.astype(str).str.strip() if raw.dtype == object else raw,
                               errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(values)
        what = "empty, NaN or not a number"
        if not bad.any():
            bad = values < 0
            what = "negative"
        if not bad.any():
            bad = values != np.round(values)
            what = "not a whole number"
        if bad.any():
            i = int(bad.argmax())
            raise DataError(f"{path}: column {column!r} has {int(bad.sum())} vote count(s) that are {what} (e.g. "
                            f"{raw.iloc[i]!r} for id {ids.iloc[i]!r}); vote counts are whole numbers >= 0 (a question "
                            "nobody was asked has 0 in every answer): mend or drop those rows")
        return values

    out = pd.DataFrame({col: counts(src) for col, src in columns.items()}, index=ids.to_numpy())
    for q, s in zip(tree.questions, tree.slices):
        if q.name not in totals:
            continue
        total, summed = counts(totals[q.name]), out.iloc[:, s].to_numpy().sum(1)
        off = total != summed
        if off.any():
            i = int(off.argmax())
            raise DataError(f"{path}: {totals[q.name]!r} is not the sum of the {q.name} answer counts in "
                            f"{int(off.sum())} row(s) (e.g. id {ids.iloc[i]!r}: {total[i]:g} vs {summed[i]:g}); the "
                            "answer columns may be fractions or from another release: give the raw vote counts")
    return out.astype(np.int64)


def parse_class_map(text: str | None) -> dict[str, str | None] | None:
    """'E=elliptical,S=spiral,?=' or a YAML/JSON file of {value: class or null} -> dict; None keeps values as names."""
    if not text:
        return None
    path = Path(text).expanduser()
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_file():
        import yaml

        if not path.is_file():
            raise DataError(f"--class-map {path}: no such file")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise DataError(f"--class-map {path}: not valid YAML/JSON ({e})") from None
        if not isinstance(raw, dict):
            raise DataError(f"--class-map {path}: expected a mapping of label value -> class name (or null)")
        pairs = [(str(k), None if v in (None, "") else str(v)) for k, v in raw.items()]
    else:
        pairs = []
        for item in text.split(","):
            if "=" not in item:
                raise DataError(f"--class-map: {item!r} is not VALUE=CLASS; e.g. 'E=elliptical,S=spiral,X=' "
                                "(an empty class drops those rows) or a YAML file")
            k, v = (p.strip() for p in item.split("=", 1))
            pairs.append((k, v or None))
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        raise DataError("--class-map: a label value is mapped twice")
    bad = [v for v in mapping.values() if v is not None and not CLASS_NAME.fullmatch(v)]
    if bad:
        raise DataError(f"--class-map: class names {bad} must start with a letter and use letters, digits, _ . -")
    return mapping

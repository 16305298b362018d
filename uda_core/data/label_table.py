"""Class labels for imported cutouts: a CSV or Parquet table joined to the cutouts by id.

Real catalogues do not use this project's class names (Galaxy10 uses 0-9, a visual catalogue "E", "Sa", ...), so
the label column's values are mapped to class names by a mapping the user gives; a value mapped to null drops its
rows (e.g. "uncertain"). Only the id and label columns are read. Vote-count labels (Galaxy Zoo) will be a second
reader beside `read_class_labels`, returning per-answer count columns instead of one class per id.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..errors import DataError

__all__ = ["read_class_labels", "parse_class_map", "CLASS_NAME"]

CLASS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")  # class names become metric and column names


def _read_columns(path: Path, columns: list[str]) -> pd.DataFrame:
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
        missing = [c for c in columns if c not in have]
        if missing:
            raise DataError(f"{path}: no column(s) {missing}; it has {have[:20]}; name the right ones with "
                            "--id-column / --label-column")
        if name.endswith(".parquet"):
            return pq.read_table(path, columns=columns).to_pandas()
        return pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False, sep=sep)
    except DataError:
        raise
    except Exception as e:  # pandas and pyarrow raise many types on damaged files
        raise DataError(f"{path}: cannot be read as a label table ({type(e).__name__}: {e}); re-write it") from None


def read_class_labels(path: str | Path, id_column: str, label_column: str) -> pd.Series:
    """id (str) -> label value (str), one per id; a missing file, column, empty value or duplicate id is an error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such label table (give a CSV or Parquet file with columns {id_column!r} and "
                        f"{label_column!r})")
    table = _read_columns(path, [id_column, label_column])
    ids, values = table[id_column].astype(str).str.strip(), table[label_column].astype(str).str.strip()
    empty = ids.eq("") | values.isin(["", "nan", "None"])
    if empty.any():
        raise DataError(f"{path}: {int(empty.sum())} row(s) with an empty {id_column!r} or {label_column!r} (first at "
                        f"data row {int(empty.to_numpy().argmax()) + 1}); drop them or fill them in")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataError(f"{path}: {len(dup)} duplicate id(s) in {id_column!r}, e.g. {dup.iloc[:3].tolist()}; "
                        "one label per galaxy")
    return pd.Series(values.to_numpy(), index=ids.to_numpy(), name=label_column)


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

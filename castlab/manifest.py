"""The run manifest: one row per frame and per instance, extended by every stage, never shrunk.

Stored as Parquet (pyarrow) with a stable ``row_id`` key. Stages add columns with :meth:`update`;
rejected rows stay, with ``status="rejected"`` and a ``reject_reason``.

One writer: in a flow run only the flow saves a run's manifest. Stage code changes a Manifest in memory
(:meth:`add_rows`, :meth:`update`) and never saves it; a task hands back :meth:`changes` (the values it set,
per row), and the flow merges them into its own manifest with :meth:`add_rows` and saves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from castlab.errors import InputError
from castlab.workspace import atomic_path

MANIFEST_NAME = "manifest.parquet"
BASE_COLUMNS = ["row_id", "kind", "parent_id", "status", "reject_reason"]


class Manifest:
    def __init__(self, path: Path, frame: pd.DataFrame | None = None) -> None:
        self.path = Path(path)
        self.df = frame if frame is not None else pd.DataFrame(columns=BASE_COLUMNS)
        self._changes: dict[str, dict[str, Any]] = {}

    def _record(self, row_id: str, values: Mapping[str, Any]) -> None:
        self._changes.setdefault(row_id, {"row_id": row_id}).update(values)

    def changes(self) -> list[dict[str, Any]]:
        """Every value set since this Manifest was loaded, one dict per row (``row_id`` + the columns set)."""
        return [dict(change) for change in self._changes.values()]

    @classmethod
    def for_run(cls, run_dir: Path) -> Manifest:
        path = Path(run_dir) / MANIFEST_NAME
        return cls.load(path) if path.exists() else cls(path)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "manifest does not exist")
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise InputError(path, f"manifest is not readable Parquet ({exc})") from exc
        return cls(path, frame.reset_index(drop=True))

    def __len__(self) -> int:
        return len(self.df)

    def add_rows(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append rows; a row whose ``row_id`` already exists is updated instead (only the columns it carries)."""
        rows = [dict(r) for r in rows]
        if not rows:
            return 0
        existing = set(self.df["row_id"]) if len(self.df) else set()
        fresh_rows, known_rows = [], []
        for row in rows:
            if not row.get("row_id"):
                raise ValueError(f"manifest row without row_id: {row}")
            if row["row_id"] in existing:
                known_rows.append(row)
            else:
                row.setdefault("status", "kept")
                row.setdefault("reject_reason", None)
                fresh_rows.append(row)
            self._record(row["row_id"], row)
        for known in _by_columns(known_rows):  # rows carrying other columns are updated separately
            self._update_many(pd.DataFrame(known))
        fresh = pd.DataFrame(fresh_rows)
        if len(fresh):
            self.df = pd.concat([self.df, fresh], ignore_index=True) if len(self.df) else fresh.reset_index(drop=True)
        return len(fresh)

    def _update_many(self, rows: pd.DataFrame) -> None:
        """Overwrite the given columns of existing rows in one vectorised step (film-scale manifests)."""
        if not len(rows):
            return
        if rows["row_id"].duplicated().any() or self.df["row_id"].duplicated().any():
            raise ValueError(f"manifest {self.path}: duplicate row_id in an update")
        position = pd.Index(self.df["row_id"]).get_indexer(rows["row_id"])
        for key in rows.columns.drop("row_id"):
            if key not in self.df.columns:
                self.df[key] = None
            column = self.df[key].astype(object)
            column.iloc[position] = rows[key].astype(object).to_numpy()
            self.df[key] = column

    def update(self, row_id: str, **values: Any) -> None:
        idx = self.df.index[self.df["row_id"] == row_id]
        if len(idx) != 1:
            raise KeyError(f"manifest {self.path}: no unique row {row_id!r}")
        self._record(row_id, values)
        for key, value in values.items():
            if key not in self.df.columns:
                self.df[key] = None
            self.df[key] = self.df[key].astype(object)
            self.df.at[idx[0], key] = value

    def rows(self, kind: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        df = self.df
        if kind is not None:
            df = df[df["kind"] == kind]
        if status is not None:
            df = df[df["status"] == status]
        return [{k: _plain(v) for k, v in r.items()} for r in df.to_dict("records")]

    def get(self, row_id: str) -> dict[str, Any]:
        found = self.df[self.df["row_id"] == row_id]
        if len(found) != 1:
            raise KeyError(row_id)
        return {k: _plain(v) for k, v in found.iloc[0].to_dict().items()}

    def save(self) -> Path:
        with atomic_path(self.path) as tmp:
            self.df.to_parquet(tmp, index=False)
        return self.path


def _by_columns(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Group rows by the set of columns they carry (an update never blanks a column a row did not name)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    return list(groups.values())


def _plain(value: Any) -> Any:
    """Parquet round trips lists as numpy arrays and missing values as NaN/None: normalise."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        return value.tolist()
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


def row_text(value: Any) -> str:
    """A row value as stripped text; None/NaN/empty → ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()

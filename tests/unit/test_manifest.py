from pathlib import Path

import pytest

from castlab.errors import InputError
from castlab.manifest import Manifest


def test_rows_are_kept_extended_and_round_trip(tmp_path: Path):
    m = Manifest(tmp_path / "manifest.parquet")
    added = m.add_rows([
        {"row_id": "frame:a:1", "kind": "frame", "shot_id": 0},
        {"row_id": "frame:a:2", "kind": "frame", "shot_id": 0, "status": "rejected", "reject_reason": "blur 3 < 80"},
    ])
    assert added == 2
    m.add_rows([{"row_id": "inst:a:1:0", "kind": "instance", "parent_id": "frame:a:1", "bbox": [1, 2, 3, 4]}])
    m.update("frame:a:1", ls_task_id=17)
    m.save()

    loaded = Manifest.load(tmp_path / "manifest.parquet")
    assert len(loaded) == 3
    assert loaded.get("frame:a:1")["ls_task_id"] == 17
    assert loaded.get("inst:a:1:0")["bbox"] == [1, 2, 3, 4]
    rejected = loaded.rows(status="rejected")
    assert [r["reject_reason"] for r in rejected] == ["blur 3 < 80"]
    assert [r["row_id"] for r in loaded.rows(kind="frame", status="kept")] == ["frame:a:1"]


def test_adding_an_existing_row_updates_instead_of_duplicating(tmp_path: Path):
    m = Manifest(tmp_path / "manifest.parquet")
    m.add_rows([{"row_id": "frame:a:1", "kind": "frame", "blur": 10.0}])
    assert m.add_rows([{"row_id": "frame:a:1", "kind": "frame", "blur": 99.0}]) == 0
    assert len(m) == 1 and m.get("frame:a:1")["blur"] == 99.0


def test_bad_manifest_files_are_named(tmp_path: Path):
    with pytest.raises(InputError, match="manifest does not exist"):
        Manifest.load(tmp_path / "nope.parquet")
    corrupt = tmp_path / "manifest.parquet"
    corrupt.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=str(corrupt)):
        Manifest.load(corrupt)
    with pytest.raises(ValueError, match="without row_id"):
        Manifest(corrupt).add_rows([{"kind": "frame"}])

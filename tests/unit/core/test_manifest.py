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


def test_bulk_update_touches_only_the_given_rows(tmp_path: Path):
    m = Manifest(tmp_path / "manifest.parquet")
    m.add_rows([{"row_id": f"frame:a:{i}", "kind": "frame", "blur": float(i), "status": "rejected",
                 "reject_reason": "blur"} for i in range(6)])
    updates = [{"row_id": f"frame:a:{i}", "status": "kept", "reject_reason": None, "split": "val", "box": [i, i]}
               for i in (4, 1)]
    assert m.add_rows(updates + [{"row_id": "frame:b:0", "kind": "frame"}]) == 1
    m.save()
    rows = {r["row_id"]: r for r in Manifest.load(m.path).rows()}
    assert len(rows) == 7
    for i in range(6):
        row = rows[f"frame:a:{i}"]
        assert row["blur"] == float(i)
        if i in (1, 4):
            assert (row["status"], row["reject_reason"], row["split"], row["box"]) == ("kept", None, "val", [i, i])
        else:
            assert (row["status"], row["reject_reason"], row["split"]) == ("rejected", "blur", None)


def test_bad_manifest_files_are_named(tmp_path: Path):
    with pytest.raises(InputError, match="manifest does not exist"):
        Manifest.load(tmp_path / "nope.parquet")
    corrupt = tmp_path / "manifest.parquet"
    corrupt.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=str(corrupt)):
        Manifest.load(corrupt)
    with pytest.raises(ValueError, match="without row_id"):
        Manifest(corrupt).add_rows([{"kind": "frame"}])


def test_an_update_keeps_the_columns_it_does_not_name(tmp_path: Path):
    m = Manifest(tmp_path / "manifest.parquet")
    m.add_rows([{"row_id": "f:1", "kind": "frame", "status": "rejected", "reject_reason": "dark", "shot_id": 3},
                {"row_id": "f:2", "kind": "frame", "shot_id": 4}])
    m.add_rows([{"row_id": "f:1", "split": "train"}, {"row_id": "f:2", "split": "val", "shot_id": 5}])
    assert m.get("f:1")["status"] == "rejected" and m.get("f:1")["reject_reason"] == "dark"
    assert m.get("f:1")["shot_id"] == 3 and m.get("f:2")["shot_id"] == 5


def test_changes_replayed_on_the_flow_manifest_give_the_same_rows(tmp_path: Path):
    """One writer: a task changes its own copy and hands back changes(); the flow merges them and saves."""
    flow = Manifest(tmp_path / "manifest.parquet")
    flow.add_rows([{"row_id": "f:1", "kind": "frame"}, {"row_id": "f:2", "kind": "frame"}])
    flow.save()
    task_copy = Manifest.for_run(tmp_path)
    assert task_copy.changes() == []
    task_copy.update("f:1", ls_task_id=7)
    task_copy.add_rows([{"row_id": "i:1", "kind": "instance", "parent_id": "f:1"}])
    assert {c["row_id"] for c in task_copy.changes()} == {"f:1", "i:1"}
    assert (tmp_path / "manifest.parquet").stat().st_size and len(Manifest.for_run(tmp_path)) == 2  # not saved
    flow.add_rows(task_copy.changes())
    assert flow.get("f:1")["ls_task_id"] == 7 and flow.get("i:1")["parent_id"] == "f:1" and len(flow) == 3
    assert flow.get("f:2")["status"] == "kept"


def test_concurrent_writers_merge_instead_of_overwriting(tmp_path):
    """Two flows saving into one run at once (a stage and a webhook-started review-sync) keep both changes."""
    import threading

    from flows.common import save_changes

    base = Manifest.for_run(tmp_path)
    base.add_rows([{"row_id": f"r{k}", "kind": "instance"} for k in range(40)])
    base.save()
    start = threading.Barrier(2)

    def writer(column: str) -> None:
        start.wait()
        for k in range(40):
            save_changes(tmp_path, [{"row_id": f"r{k}", column: k}])

    threads = [threading.Thread(target=writer, args=(c,)) for c in ("stage_value", "review_value")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = {r["row_id"]: r for r in Manifest.for_run(tmp_path).rows()}
    assert all(rows[f"r{k}"]["stage_value"] == k and rows[f"r{k}"]["review_value"] == k for k in range(40))

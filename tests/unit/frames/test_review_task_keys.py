"""One task per content, shared by every run that asks for it: run membership of Label Studio tasks (no server)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from castlab.errors import InputError
from castlab.labelstudio import client
from castlab.labelstudio.projects.identity import instance_key, instance_keys, partition_key


class FakeLS:
    """The few SDK calls push_tasks makes, over an in-memory project."""

    def __init__(self) -> None:
        self.store: dict[int, dict[str, Any]] = {}
        self.tasks = SimpleNamespace(list=self._list, update=self._update)
        self.projects = SimpleNamespace(import_tasks=self._import)

    def _list(self, project: int, fields: str, page_size: int) -> list[Any]:
        return [SimpleNamespace(id=i, data=dict(d)) for i, d in self.store.items()]

    def _update(self, id: str, data: dict[str, Any]) -> None:
        self.store[int(id)] = dict(data)

    def _import(self, id: int, request: list[dict[str, Any]], return_task_ids: bool) -> Any:
        ids = []
        for item in request:
            ids.append(len(self.store) + 1)
            self.store[ids[-1]] = dict(item["data"])
        return SimpleNamespace(task_ids=ids)


def _items(run: str, *keys: str) -> list[dict[str, Any]]:
    return [{"data": {"castlab_key": k, "castlab_run": run}} for k in keys]


def test_a_second_run_joins_the_tasks_of_the_same_content_and_leaves_the_others():
    ls = FakeLS()
    first = client.push_tasks(ls, 1, _items("runs/a", "k1", "k2"))
    assert first.created == ["k1", "k2"] and first.joined == []
    second = client.push_tasks(ls, 1, _items("runs/b", "k1", "k2", "k3"), complete_for="runs/b")
    assert second.created == ["k3"] and second.joined == ["k1", "k2"] and len(ls.store) == 3
    assert client.task_runs(ls.store[first["k1"]]) == ["runs/a", "runs/b"]
    assert client.in_run({"data": ls.store[first["k2"]]}, "runs/a")  # still the first run's too
    assert client.push_tasks(ls, 1, _items("runs/b", "k1", "k2", "k3")).joined == []  # nothing twice

    # run a pushed again with a changed review (k2's content is gone): k2 leaves run a, stays in run b
    again = client.push_tasks(ls, 1, _items("runs/a", "k1"), complete_for="runs/a")
    assert again.left == ["k2"] and again.created == []
    assert client.task_runs(ls.store[first["k2"]]) == ["runs/b"]
    assert client.push_tasks(ls, 1, _items("runs/a", "k1", "k2")).joined == ["k2"]  # and may join again
    assert client.task_runs(ls.store[first["k2"]]) == ["runs/a", "runs/b"]


def _png(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path)


def test_instance_keys_are_content_and_name_what_cannot_be_read(tmp_path: Path):
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:20] = 255
    a = {"row_id": "inst:v:3:0", "parent_id": "frame:v:3", "mask_path": _png(tmp_path / "run1" / "m.png", mask)}
    b = {"row_id": "inst:v:3:1", "parent_id": "frame:v:3", "mask_path": _png(tmp_path / "run2" / "m.png", mask)}
    assert instance_key(a) == instance_key(b)  # the same mask of the same frame, in another run folder
    assert instance_key(a).startswith("v:3:")
    reviewed = dict(a, reviewed_mask_path=_png(tmp_path / "r.png", 255 - mask))
    assert instance_key(reviewed) != instance_key(a)  # the crop was cut from the reviewed mask
    broken = dict(a, row_id="inst:v:3:2", mask_path=str(tmp_path / "missing.png"))
    with pytest.raises(InputError, match="missing.png"):
        instance_key(broken)
    keys, failed = instance_keys([a, broken])
    assert list(keys) == ["inst:v:3:0"] and failed[0]["instance"] == "inst:v:3:2"
    rows = [dict(a, identity_cluster=0), dict(broken, identity_cluster=-1)]
    assert partition_key(rows, keys) == partition_key([dict(a, identity_cluster=0)], keys)  # noise left out
    assert partition_key([dict(a, identity_cluster=1)], keys) != partition_key(rows, keys)

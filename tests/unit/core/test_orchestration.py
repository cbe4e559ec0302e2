"""Task runner choice (``orchestration``), GPU requests, the per-process model cache and the CLI option."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from castlab import orchestration
from castlab.config import load_config
from castlab.errors import ConfigError
from castlab.orchestration import (
    configured,
    gpu_request,
    gpu_resources,
    runner_options,
    task_runner,
    worker_models,
)

API = "http://127.0.0.1:4999/api"


def cfg_with(**orchestration_settings: Any):
    return load_config(profile="tiny", extra={"orchestration": orchestration_settings})


class DaskTaskRunner:  # stand-ins: gpu_request looks at the runner's class name only
    pass


class RayTaskRunner:
    pass


class ThreadPoolTaskRunner:
    pass


def test_defaults_are_threads():
    cfg = load_config(profile="tiny")
    assert cfg.orchestration.task_runner == "thread" and cfg.orchestration.address is None
    assert runner_options(cfg, cuda=0, api_url=None) == ("thread", {"max_workers": cfg.orchestration.workers})


def test_bad_runner_fails_when_the_config_loads():
    with pytest.raises(ConfigError, match="orchestration.task_runner"):
        cfg_with(task_runner="spark")


def test_dask_local_cluster_gets_worker_processes_and_their_environment(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path):
    monkeypatch.setenv("CASTLAB_WORKSPACE", str(tmp_path))
    kind, options = runner_options(cfg_with(task_runner="dask", workers=3), cuda=0, api_url=API)
    cluster = options["cluster_kwargs"]
    assert kind == "dask" and set(options) == {"cluster_kwargs"}
    assert (cluster["n_workers"], cluster["processes"], cluster["threads_per_worker"]) == (3, True, 1)
    assert cluster["env"]["PREFECT_API_URL"] == API and cluster["env"]["CASTLAB_WORKSPACE"] == str(tmp_path)
    assert "resources" not in cluster  # no CUDA: no GPU resource, every task schedules on CPU workers
    gpu_cluster = runner_options(cfg_with(task_runner="dask"), cuda=2, api_url=API)[1]["cluster_kwargs"]
    assert gpu_cluster["resources"] == {"GPU": 2}


def test_existing_clusters_are_reached_by_address():
    assert runner_options(cfg_with(task_runner="dask", address="tcp://10.0.0.5:8786"), cuda=0, api_url=API) == (
        "dask", {"address": "tcp://10.0.0.5:8786"})
    assert runner_options(cfg_with(task_runner="ray", address="ray://10.0.0.5:10001"), cuda=1, api_url=API) == (
        "ray", {"address": "ray://10.0.0.5:10001"})


def test_local_ray_cluster_options():
    kind, options = runner_options(cfg_with(task_runner="ray", workers=2), cuda=1, api_url=API)
    init = options["init_kwargs"]
    assert kind == "ray" and init["num_cpus"] == 2 and init["num_gpus"] == 1
    assert init["runtime_env"]["env_vars"]["PREFECT_API_URL"] == API


def test_distributed_runners_need_a_prefect_server():
    for kind in ("dask", "ray"):
        with pytest.raises(ConfigError, match="orchestration.task_runner: .*PREFECT_API_URL"):
            runner_options(cfg_with(task_runner=kind), cuda=0, api_url=None)


def test_more_gpus_per_task_than_the_machine_has_fails_early():
    with pytest.raises(ConfigError, match="orchestration.gpus_per_task"):
        runner_options(cfg_with(task_runner="dask", gpus_per_task=2), cuda=1, api_url=API)


def test_task_runner_builds_prefect_runners(monkeypatch: pytest.MonkeyPatch):
    from prefect.task_runners import ThreadPoolTaskRunner as Threads
    from prefect_dask import DaskTaskRunner as Dask

    monkeypatch.setattr(orchestration, "prefect_api_url", lambda: API)
    monkeypatch.setattr(orchestration, "cuda_devices", lambda: 0)
    threads = task_runner(cfg_with(task_runner="thread", workers=3))
    assert isinstance(threads, Threads) and threads._max_workers == 3
    dask = task_runner(cfg_with(task_runner="dask"))  # the cluster starts on the first submit, not here
    assert isinstance(dask, Dask) and dask.cluster_kwargs["processes"] is True
    assert isinstance(task_runner(cfg_with(task_runner="dask", address="tcp://h:8786")), Dask)


def test_ray_without_its_extra_names_the_setting_and_the_extra(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(orchestration, "prefect_api_url", lambda: API)
    monkeypatch.setattr(orchestration, "cuda_devices", lambda: 0)
    monkeypatch.setitem(sys.modules, "prefect_ray", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "prefect_ray.task_runners", None)
    with pytest.raises(ConfigError, match=r"orchestration\.task_runner: ray .*castlab\[ray\]"):
        task_runner(cfg_with(task_runner="ray"))


def test_configured_sets_the_task_runner():
    class Flow:
        def with_options(self, **options: Any) -> dict[str, Any]:
            return options

    options = configured(Flow(), cfg_with(task_runner="thread", workers=4))
    assert options["task_runner"]._max_workers == 4


def test_gpu_requests_only_on_cuda_and_distributed_runners():
    assert gpu_request(DaskTaskRunner(), 1, cuda=1) == ("dask", {"resources": {"GPU": 1}})
    assert gpu_request(RayTaskRunner(), 0.5, cuda=2) == ("ray", {"num_gpus": 0.5})
    assert gpu_request(DaskTaskRunner(), 1, cuda=0) is None  # no CUDA here: CPU workers must take the tasks
    assert gpu_request(DaskTaskRunner(), 0, cuda=1) is None
    assert gpu_request(ThreadPoolTaskRunner(), 1, cuda=1) is None
    assert gpu_request(None, 1, cuda=1) is None


def test_gpu_resources_annotates_dask_submissions(monkeypatch: pytest.MonkeyPatch):
    import dask

    cfg = cfg_with(task_runner="dask", gpus_per_task=1)
    monkeypatch.setattr(orchestration, "cuda_devices", lambda: 1)
    with gpu_resources(cfg, runner=DaskTaskRunner()):
        assert dask.get_annotations() == {"resources": {"GPU": 1.0}}
    assert dask.get_annotations() == {}
    monkeypatch.setattr(orchestration, "cuda_devices", lambda: 0)
    with gpu_resources(cfg, runner=DaskTaskRunner()):
        assert dask.get_annotations() == {}


def test_models_load_once_per_process_and_config():
    orchestration.clear_worker_models()
    loads: list[int] = []

    def loader(cfg):
        loads.append(cfg.seed)
        return {"seed": cfg.seed}

    a, b = load_config(profile="tiny"), load_config(profile="tiny", extra={"seed": 7})
    for _ in range(3):
        with worker_models("stage", a, loader) as models:
            assert models == {"seed": a.seed}
    assert loads == [a.seed] and orchestration.loaded_models() == ["stage"]
    with worker_models("stage", b, loader) as models:  # another config: its own models
        assert models == {"seed": 7}
    assert loads == [a.seed, 7]
    orchestration.clear_worker_models()
    assert orchestration.loaded_models() == []


def test_cached_models_are_used_by_one_task_at_a_time():
    orchestration.clear_worker_models()
    cfg = load_config(profile="tiny")
    busy, overlaps = [], []

    def use() -> None:
        with worker_models("shared", cfg, lambda c: object()):
            if busy:
                overlaps.append(True)
            busy.append(1)
            time.sleep(0.02)
            busy.pop()

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps
    orchestration.clear_worker_models()


def test_cli_task_runner_option_overrides_the_setting(monkeypatch: pytest.MonkeyPatch):
    from flows.cli import _flow_config, build_parser

    monkeypatch.setenv("CASTLAB_TASK_RUNNER", "")  # unset (empty), and unset again after the test
    args = build_parser().parse_args(["identify", "run", "--profile", "tiny"])
    assert _flow_config(args).orchestration.task_runner == "thread"
    args = build_parser().parse_args(["curate", "v.mp4", "--task-runner", "dask", "--profile", "tiny"])
    assert _flow_config(args).orchestration.task_runner == "dask"
    assert load_config(profile="tiny").orchestration.task_runner == "dask"  # the flow's own config agrees
    with pytest.raises(SystemExit):
        build_parser().parse_args(["status", "--task-runner", "dask"])  # stack commands run no flow


def test_a_flow_on_another_runner_than_the_settings_name_runs_elsewhere(monkeypatch: pytest.MonkeyPatch):
    from prefect.context import FlowRunContext

    def inside(runner: Any) -> None:
        monkeypatch.setattr(FlowRunContext, "get", classmethod(lambda cls: type("Ctx", (), {"task_runner": runner})))

    inside(ThreadPoolTaskRunner())  # a deployment run: the flow as declared
    assert orchestration.runs_elsewhere(cfg_with(task_runner="dask"))
    assert not orchestration.runs_elsewhere(cfg_with(task_runner="thread"))
    inside(DaskTaskRunner())  # run again on the configured runner (or configured up front by the CLI)
    assert not orchestration.runs_elsewhere(cfg_with(task_runner="dask"))
    monkeypatch.setattr(FlowRunContext, "get", classmethod(lambda cls: None))
    assert not orchestration.runs_elsewhere(cfg_with(task_runner="dask"))  # outside a flow run

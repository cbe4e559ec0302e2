"""How a flow run executes its chunked tasks: the ``orchestration`` settings → a Prefect task runner.

- :func:`task_runner` / :func:`configured`: ``thread`` (a thread pool in the flow's process), ``dask`` (prefect-dask:
  an existing scheduler at ``orchestration.address``, else a ``LocalCluster`` of ``orchestration.workers``
  processes with one thread each) or ``ray`` (prefect-ray, the optional extra ``castlab[ray]``). Flows pick
  it at run time: ``configured(flow, cfg)(...)`` is ``flow.with_options(task_runner=task_runner(cfg))(...)``; a
  deployment run of a chunked flow checks :func:`runs_elsewhere` and runs itself again on the configured runner.
- :func:`gpu_resources`: wrap the ``.submit``/``.map`` of GPU tasks in it; on CUDA they ask the runner for
  ``orchestration.gpus_per_task`` GPUs (Dask resource ``GPU``, Ray ``num_gpus``); elsewhere it does nothing.
- :func:`worker_models`: a per-process model cache, so a worker loads a stage's models once, not once per task.

Distributed workers are other processes: a local cluster is given the environment castlab and Prefect need
(:data:`WORKER_ENV`, plus the flow's Prefect API URL); workers of an existing cluster must be started with it.
Prefect itself is imported only inside these functions (``import castlab.orchestration`` stays light).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from castlab.config import Config
from castlab.errors import ConfigError

RUNNERS = ("thread", "dask", "ray")
GPU = "GPU"  # the Dask worker resource GPU tasks ask for (start remote workers with --resources GPU=<count>)
RAY_EXTRA = "castlab[ray]"
# Set in a local cluster's worker processes when set here: where runs live, where Prefect keeps its state, caches.
WORKER_ENV = (
    "CASTLAB_WORKSPACE", "CASTLAB_PROFILE", "CASTLAB_CONFIGS_DIR", "PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH",
    "PREFECT_API_KEY", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_LEVEL", "NUMBA_CACHE_DIR",
    "TORCHDYNAMO_DISABLE", "TMPDIR",
)
F = TypeVar("F")


def cuda_devices() -> int:
    """GPUs this process sees through torch (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def prefect_api_url() -> str | None:
    """The Prefect API the current process talks to (``PREFECT_API_URL`` or the active settings), if any."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def worker_env(api_url: str) -> dict[str, str]:
    """Environment for a local cluster's workers: :data:`WORKER_ENV` as set here, and ``PREFECT_API_URL``."""
    env = {key: os.environ[key] for key in WORKER_ENV if os.environ.get(key)}
    env["PREFECT_API_URL"] = api_url
    return env


def runner_options(cfg: Config, *, cuda: int, api_url: str | None) -> tuple[str, dict[str, Any]]:
    """The runner kind and the keyword arguments of its Prefect task runner (pure: no Prefect import).

    `cuda`: GPUs seen here (a local cluster's workers each offer them as resource ``GPU``); `api_url`: the
    Prefect API distributed workers must report to (required for ``dask`` and ``ray``).
    """
    settings = cfg.orchestration
    kind, address, workers = settings.task_runner, settings.address, int(settings.workers)
    if kind == "thread":
        return kind, {"max_workers": workers}
    if not api_url:
        raise ConfigError(
            f"orchestration.task_runner: {kind} runs tasks in other processes, which must report to a Prefect "
            "server: start one (`castlab up`) or set PREFECT_API_URL (Prefect's ephemeral mode is per process)"
        )
    gpus = float(settings.gpus_per_task)
    if not address and cuda and gpus > cuda:
        raise ConfigError(f"orchestration.gpus_per_task: {gpus:g} but this machine has {cuda} GPU(s): GPU tasks "
                          "could never be scheduled on the local cluster")
    if kind == "dask":
        if address:
            return kind, {"address": address}
        cluster: dict[str, Any] = {"n_workers": workers, "processes": True, "threads_per_worker": 1,
                                   "env": worker_env(api_url)}
        if cuda:
            cluster["resources"] = {GPU: cuda}
        return kind, {"cluster_kwargs": cluster}
    if kind == "ray":
        if address:
            return kind, {"address": address}
        init: dict[str, Any] = {"num_cpus": workers, "runtime_env": {"env_vars": worker_env(api_url)}}
        if cuda:
            init["num_gpus"] = cuda
        return kind, {"init_kwargs": init}
    raise ConfigError(f"orchestration.task_runner: {kind!r} is not one of {', '.join(RUNNERS)}")


def task_runner(cfg: Config) -> Any:
    """The Prefect task runner ``orchestration.task_runner`` names, set up from the other ``orchestration``
    settings (see the module doc). A ``dask``/``ray`` runner needs a Prefect API URL (a server) already set."""
    kind = cfg.orchestration.task_runner
    if kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(**runner_options(cfg, cuda=0, api_url=None)[1])
    if kind == "ray":
        runner_class = _ray_runner_class()  # a missing extra is said first
    else:
        from prefect_dask import DaskTaskRunner as runner_class
    return runner_class(**runner_options(cfg, cuda=cuda_devices(), api_url=prefect_api_url())[1])


def _ray_runner_class() -> Any:
    try:
        from prefect_ray.task_runners import RayTaskRunner
    except ImportError as exc:
        raise ConfigError(
            f"orchestration.task_runner: ray needs prefect-ray, the optional extra {RAY_EXTRA}: "
            f"pip install '{RAY_EXTRA}' (or set orchestration.task_runner to thread or dask)"
        ) from exc
    return RayTaskRunner


def configured(flow: F, cfg: Config) -> F:
    """`flow` with the task runner of `cfg` (``flow.with_options(task_runner=task_runner(cfg))``)."""
    return flow.with_options(task_runner=task_runner(cfg))  # type: ignore[attr-defined]


_RUNNER_CLASSES = {"thread": "ThreadPoolTaskRunner", "dask": "DaskTaskRunner", "ray": "RayTaskRunner"}


def runs_elsewhere(cfg: Config) -> bool:
    """True inside a flow run whose task runner is not the one `cfg` names: a deployment run (its flow carries
    the default thread runner) started under ``orchestration.task_runner: dask``. The flow then runs itself again
    as a subflow on the configured runner (``configured(flow, cfg)(...)``); the CLI configures it up front."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    current = type(context.task_runner).__name__ if context and context.task_runner else None
    return current is not None and current != _RUNNER_CLASSES[cfg.orchestration.task_runner]


def rerun_on_configured_runner(flow: Any, cfg: Config, params: dict[str, Any]) -> Any:
    """`flow(**params)` as a subflow on the runner `cfg` names (see :func:`runs_elsewhere`)."""
    from prefect import get_run_logger

    get_run_logger().info("running again as a subflow on the %s task runner (orchestration.task_runner)",
                          cfg.orchestration.task_runner)
    return configured(flow, cfg)(**params)


# -- GPU tasks ----------------------------------------------------------------------------------------------
def gpu_request(runner: Any, gpus: float, cuda: int) -> tuple[str, dict[str, Any]] | None:
    """What GPU tasks ask `runner` for: ``("dask", {"resources": {"GPU": gpus}})``, ``("ray", {"num_gpus":
    gpus})``, or None (no CUDA here, ``gpus`` 0, or a runner without GPU scheduling, e.g. threads)."""
    if cuda <= 0 or gpus <= 0 or runner is None:
        return None
    name = type(runner).__name__
    if name == "DaskTaskRunner":
        return "dask", {"resources": {GPU: gpus}}
    if name == "RayTaskRunner":
        return "ray", {"num_gpus": gpus}
    return None


@contextmanager
def gpu_resources(cfg: Config, runner: Any = None) -> Iterator[None]:
    """Around the ``.submit``/``.map`` calls of GPU tasks in a flow: when this process sees CUDA, the tasks ask
    the run's task runner (`runner`, default: the current flow run's) for ``orchestration.gpus_per_task`` GPUs
    (Dask: only workers started with resource ``GPU`` take them; Ray: ``num_gpus``). Without CUDA, or on the
    thread runner, nothing changes."""
    if runner is None:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        runner = context.task_runner if context else None
    gpus = float(cfg.orchestration.gpus_per_task)
    request = gpu_request(runner, gpus, cuda_devices() if gpus > 0 and runner is not None else 0)
    if request is None:
        yield
        return
    kind, options = request
    if kind == "dask":
        import dask

        with dask.annotate(**options):
            yield
    else:
        from prefect_ray.context import remote_options

        with remote_options(**options):
            yield


# -- models, once per worker process ------------------------------------------------------------------------
@dataclass
class _Entry:
    key: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    models: Any = None


_MODELS: dict[str, _Entry] = {}
_MODELS_GUARD = threading.Lock()


def config_key(cfg: Config) -> str:
    """A digest of the whole resolved config (a superset of the model settings: a changed value never reuses
    models loaded for another config)."""
    text = json.dumps(cfg.data, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


@contextmanager
def worker_models(name: str, cfg: Config, loader: Callable[[Config], Any]) -> Iterator[Any]:
    """The models of stage `name` for `cfg`, loaded by ``loader(cfg)`` once per process and kept (one config per
    stage: another config replaces them). Held under a lock while in use, so tasks sharing a process (the
    thread runner) never drive one model at the same time."""
    key = config_key(cfg)
    with _MODELS_GUARD:
        entry = _MODELS.get(name)
        if entry is None or entry.key != key:
            entry = _MODELS[name] = _Entry(key)
    with entry.lock:
        if entry.models is None:
            entry.models = loader(cfg)
        yield entry.models


def loaded_models() -> list[str]:
    """The stages whose models this process holds."""
    with _MODELS_GUARD:
        return sorted(name for name, entry in _MODELS.items() if entry.models is not None)


def clear_worker_models() -> None:
    """Forget every cached model of this process."""
    with _MODELS_GUARD:
        _MODELS.clear()

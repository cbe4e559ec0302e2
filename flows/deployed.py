"""Deployment entrypoints (prefect.yaml): castlab's flows with the task runner of the worker's configuration.

A deployment run imports this module in the worker's environment (``CASTLAB_PROFILE``, the workspace): each flow
gets ``orchestration.task_runner`` from the default configuration layered for that profile, as the CLI does with
``--task-runner`` left out. A run's own ``config_files`` still decide everything else.
"""

from __future__ import annotations

from castlab.config import load_config
from castlab.orchestration import configured
from flows import caption as _caption
from flows import curate as _curate
from flows import dataset as _dataset
from flows import evaluate as _evaluate
from flows import identify as _identify
from flows import propagate as _propagate
from flows import train as _train

_CFG = load_config()

curate = configured(_curate.curate, _CFG)
identify = configured(_identify.identify, _CFG)
caption = configured(_caption.caption, _CFG)
dataset = configured(_dataset.dataset, _CFG)
train = configured(_train.train, _CFG)
evaluate = configured(_evaluate.evaluate, _CFG)
propagate = configured(_propagate.propagate, _CFG)

"""Dataset assembly: reviewed instances → a LoRA training dataset (images, captions, metadata.json, kohya layout).

Stage face: :func:`process` (a chunk of reviewed instance rows → dataset files and metadata entries) and
:func:`run` (a run's reviewed instances → the whole dataset).
"""

from castlab.dataset.assemble import Layout, process
from castlab.dataset.stage import REVIEWED_STATES, reviewed_instances, run

__all__ = ["REVIEWED_STATES", "Layout", "process", "reviewed_instances", "run"]

"""Character datasets: reviewed instances of one or more runs → one dataset per character (images with soft
alpha masks, captions, metadata.json, kohya pair, report), and exports for other trainers.

Stage face: :func:`process` (a chunk of chosen rows → dataset files and metadata entries) and :func:`run`
(runs → one dataset per reviewed character).
"""

from castlab.dataset.assemble import Layout, assemble_character, process
from castlab.dataset.candidates import REVIEWED_STATES, gather, reviewed_instances
from castlab.dataset.stage import run

__all__ = ["REVIEWED_STATES", "Layout", "assemble_character", "gather", "process", "reviewed_instances", "run"]

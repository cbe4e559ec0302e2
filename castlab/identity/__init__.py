"""Identity: face-first embeddings, clusters, review decisions, suggestions.

Stage face: :func:`process` (a chunk of instance rows → routing fields + vectors) and :func:`run` (embed, cluster,
write ``identity/``, manifest saved).
"""

from castlab.identity.stage import IdentityModels, load_models, process, run

__all__ = ["IdentityModels", "load_models", "process", "run"]

"""castlab's Label Studio ML backend: one predictor per review project kind behind a thin router.

:mod:`ml_backend.app` (HTTP) → :mod:`ml_backend.router` (parses the label config once, :mod:`ml_backend.kinds`)
→ the predictor of that project: :mod:`ml_backend.masks` (SAM2 brush masks), :mod:`ml_backend.identity`
(identity suggestions that learn from annotations) or :mod:`ml_backend.captions` (VLM captions), each with
Label Studio's ML contract (:mod:`ml_backend.predictor`). :mod:`ml_backend.auth` decides who may call it
(HTTP basic auth). Start it with ``python -m ml_backend --host H --port P`` (or ``castlab backend``).
"""

from ml_backend.errors import BackendError

__all__ = ["BackendError"]

"""The managed local services (Label Studio, Prefect server, ML backend): ``stack.up(cfg)``, ``stack.down(cfg)``,
``stack.status(cfg)``, ``stack.prefect_api_url(cfg)``.

Modules: :mod:`~castlab.stack.process` (detached processes, ports, pid records, signals),
:mod:`~castlab.stack.labelstudio_server` (Label Studio from its own virtualenv) and
:mod:`~castlab.stack.services` (the three services from config). Clients find Label Studio with
:func:`castlab.labelstudio.connection.labelstudio_connection`, which does not import this package.
"""

from castlab.stack.labelstudio_server import LabelStudioServer, labelstudio_venv, labelstudio_version
from castlab.stack.process import ManagedProcess, check_port_free, port_in_use
from castlab.stack.services import DEFAULT_SERVICES, SERVICES, down, prefect_api_url, status, up

__all__ = [
    "DEFAULT_SERVICES",
    "SERVICES",
    "LabelStudioServer",
    "ManagedProcess",
    "check_port_free",
    "down",
    "labelstudio_venv",
    "labelstudio_version",
    "port_in_use",
    "prefect_api_url",
    "status",
    "up",
]

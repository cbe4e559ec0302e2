"""Where castlab's clients find Label Studio: its URL and API token.

``LABEL_STUDIO_URL`` with ``LABEL_STUDIO_API_KEY`` (or ``LABEL_STUDIO_API_KEY_FILE``, mode 0600) name any
server; else the local stack's Label Studio (``castlab up``) is used: its URL from the settings
``labelstudio.host``/``labelstudio.port`` and its token from the admin login that the stack generated once
and keeps in ``<workspace>/stack/labelstudio.credentials.json`` (mode 0600). Tokens and passwords are never
logged, printed or shown in reprs.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from castlab.config import Config
from castlab.errors import StackError
from castlab.workspace import stack_dir, write_private

CREDENTIALS_FILE = "labelstudio.credentials.json"
HEALTH_PATH = "/health"


@dataclass(frozen=True)
class Credentials:
    """Label Studio admin login and legacy API token (secrets: never print them)."""

    username: str
    password: str
    token: str

    @classmethod
    def generate(cls) -> Credentials:
        return cls(
            username=f"castlab-{secrets.token_hex(4)}@castlab.local",
            password=secrets.token_urlsafe(24),
            token=secrets.token_hex(20),
        )

    def __repr__(self) -> str:  # keep secrets out of logs and tracebacks
        return f"Credentials(username={self.username!r}, password=***, token=***)"


def credentials_path() -> Path:
    """The local stack's Label Studio credentials file, ``<workspace>/stack/labelstudio.credentials.json``."""
    return stack_dir() / CREDENTIALS_FILE


def load_credentials(path: Path) -> Credentials:
    """Read a credentials file written by :func:`load_or_create_credentials`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return Credentials(username=data["username"], password=data["password"], token=data["token"])
    except FileNotFoundError as exc:
        problem = "Label Studio credentials file does not exist (start Label Studio with `castlab up`)"
        raise StackError(f"{path}: {problem}") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StackError(f"{path}: not a valid Label Studio credentials file ({type(exc).__name__})") from exc


def load_or_create_credentials(path: Path) -> Credentials:
    """The credentials kept at `path` (mode 0600), generated with `secrets` the first time."""
    path = Path(path)
    if path.exists():
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return load_credentials(path)
    creds = Credentials.generate()
    write_private(path, json.dumps(asdict(creds), indent=2) + "\n")
    return creds


def _key_from_file(path_text: str) -> str:
    """The API key in ``LABEL_STUDIO_API_KEY_FILE``; the file must be readable by its owner only."""
    path = Path(path_text).expanduser()
    try:
        mode = path.stat().st_mode
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise StackError(f"{path}: cannot read LABEL_STUDIO_API_KEY_FILE ({exc.strerror})") from exc
    if mode & 0o077:
        raise StackError(f"{path}: LABEL_STUDIO_API_KEY_FILE must be readable by you only (chmod 600 {path})")
    if not key:
        raise StackError(f"{path}: LABEL_STUDIO_API_KEY_FILE is empty")
    return key


def health_ok(response: requests.Response) -> bool:
    """True when a Label Studio ``/health`` response says the server is up."""
    try:
        return response.status_code == 200 and response.json().get("status") == "UP"
    except ValueError:
        return False


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True when the Label Studio at `url` answers ``/health`` with status UP."""
    try:
        response = requests.get(url + HEALTH_PATH, timeout=timeout, allow_redirects=False)
    except requests.RequestException:
        return False
    return health_ok(response)


def local_url(cfg: Config) -> str:
    """The local stack's Label Studio URL, from the settings ``labelstudio.host`` and ``labelstudio.port``."""
    return f"http://{cfg.labelstudio.host}:{cfg.labelstudio.port}"


def labelstudio_connection(cfg: Config) -> tuple[str, str]:
    """(url, token) of Label Studio: ``LABEL_STUDIO_URL`` + ``LABEL_STUDIO_API_KEY`` (or ``..._FILE``, mode
    0600) win; else the local stack's Label Studio, when it answers ``/health``, with the token from its
    credentials file."""
    url = os.environ.get("LABEL_STUDIO_URL", "").strip()
    key = os.environ.get("LABEL_STUDIO_API_KEY", "").strip()
    key_file = os.environ.get("LABEL_STUDIO_API_KEY_FILE", "").strip()
    if url or key or key_file:
        if not url:
            raise StackError("LABEL_STUDIO_API_KEY(_FILE) is set but LABEL_STUDIO_URL is not")
        if not key and key_file:
            key = _key_from_file(key_file)
        if not key:
            raise StackError("LABEL_STUDIO_URL is set but LABEL_STUDIO_API_KEY(_FILE) is not")
        return url.rstrip("/"), key
    path = credentials_path()
    if not path.exists():
        raise StackError(
            "Label Studio is not running: start it with `castlab up` "
            "(or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY for another server)"
        )
    url = local_url(cfg)
    if not healthy(url):
        raise StackError(
            f"Label Studio at {url} does not answer {HEALTH_PATH}: start it with `castlab up` or wait until "
            f"it has started (`castlab status`; log: {stack_dir() / 'labelstudio.log'})"
        )
    return url, load_credentials(path).token

"""An existing PostgreSQL for the managed Label Studio and Prefect server (``castlab up``).

``CASTLAB_DATABASE_URL`` (or the setting ``database.url``, which must not hold a password: the resolved config is
copied into every run folder) is ``postgresql://user:password@host:port``; Label Studio uses the database
``database.labelstudio_db`` and the Prefect server ``database.prefect_db`` there. Both databases must exist (the
Prefect one with ``pg_trgm``, or a role that may create it). Empty: both keep their SQLite files in the workspace.

The password goes to the two servers through their environment only; :meth:`PostgresDatabase.display` and the
repr leave it out, so it never reaches a log, ``castlab status`` or an error message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from castlab.config import Config
from castlab.errors import StackError

URL_ENV = "CASTLAB_DATABASE_URL"
SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class PostgresDatabase:
    """Where Label Studio's and the Prefect server's databases live; ``password`` never shows in its repr."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    labelstudio_db: str
    prefect_db: str

    def display(self, database: str) -> str:
        """``postgresql://user@host:port/database``: the password left out."""
        return f"postgresql://{quote(self.user, safe='')}@{self._netloc()}/{database}"

    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def labelstudio_env(self) -> dict[str, str]:
        """Label Studio's database settings (its ``LABEL_STUDIO_`` prefixed names win over inherited ones)."""
        return {
            "LABEL_STUDIO_DJANGO_DB": "default",  # Label Studio's name for its PostgreSQL settings
            "LABEL_STUDIO_POSTGRE_NAME": self.labelstudio_db,
            "LABEL_STUDIO_POSTGRE_USER": self.user,
            "LABEL_STUDIO_POSTGRE_PASSWORD": self.password,
            "LABEL_STUDIO_POSTGRE_HOST": self.host,
            "LABEL_STUDIO_POSTGRE_PORT": str(self.port),
        }

    def prefect_env(self) -> dict[str, str]:
        """The Prefect server's ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` (asyncpg driver)."""
        login = quote(self.user, safe="") + (f":{quote(self.password, safe='')}" if self.password else "")
        return {"PREFECT_SERVER_DATABASE_CONNECTION_URL":
                f"postgresql+asyncpg://{login}@{self._netloc()}/{self.prefect_db}"}


def parse_database_url(url: str, labelstudio_db: str, prefect_db: str, source: str = URL_ENV) -> PostgresDatabase:
    """A :class:`PostgresDatabase` from ``postgresql://user[:password]@host[:port]`` (StackError naming `source`,
    never echoing the URL, when it is not one)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or 5432
    except ValueError as exc:
        raise StackError(f"{source}: not a postgresql://user:password@host:port URL ({exc})") from None
    problem = None
    if parts.scheme not in SCHEMES:
        problem = f"the scheme must be {' or '.join(SCHEMES)}, not {parts.scheme!r}"
    elif not parts.hostname or not parts.username:
        problem = "it needs a user and a host (postgresql://user:password@host:port)"
    elif parts.path.strip("/") or parts.query or parts.fragment:
        problem = ("give no database, query or fragment: the databases are the settings "
                   "'database.labelstudio_db' and 'database.prefect_db'")
    if problem:
        raise StackError(f"{source}: {problem}")
    return PostgresDatabase(
        host=str(parts.hostname), port=int(port), user=unquote(str(parts.username)),
        password=unquote(parts.password or ""), labelstudio_db=labelstudio_db, prefect_db=prefect_db,
    )


def configured_database(cfg: Config) -> PostgresDatabase | None:
    """``CASTLAB_DATABASE_URL``, else the setting ``database.url``; None when both are empty (SQLite)."""
    settings = cfg.database
    from_env = os.environ.get(URL_ENV, "").strip()
    url, source = (from_env, URL_ENV) if from_env else (settings.url.strip(), "setting 'database.url'")
    if not url:
        return None
    return parse_database_url(url, settings.labelstudio_db, settings.prefect_db, source)


def prefect_database_env(cfg: Config) -> dict[str, str]:
    """The Prefect server's database environment: {} for its SQLite file."""
    database = configured_database(cfg)
    return database.prefect_env() if database else {}


def describe_databases(cfg: Config) -> dict[str, str]:
    """``{"labelstudio": ..., "prefect": ...}``: each server's database URL without the password, or "sqlite"."""
    try:
        database = configured_database(cfg)
    except StackError as exc:
        return {"labelstudio": str(exc), "prefect": str(exc)}
    if database is None:
        return {"labelstudio": "sqlite", "prefect": "sqlite"}
    return {"labelstudio": database.display(database.labelstudio_db),
            "prefect": database.display(database.prefect_db)}

"""Settings every service shares: where it runs (dev or prod), where local data lives, how it logs.

Local data is private: the data dir is ``0700`` and SQLite files ``0600``, and a data dir or secret file that
another user owns, or that anyone else may write, is refused with a one-line :class:`UnsafePathError`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class UnsafePathError(SystemExit):
    """A data dir or secret file is owned by another user or writable by others. A ``SystemExit``: a
    service that meets it stops with this one line (no traceback), before it reads or writes anything."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _refuse_unsafe(path: Path, info: os.stat_result, what: str) -> None:
    if info.st_uid != os.geteuid():
        raise UnsafePathError(
            f"streamtoken: refusing {what} {path}: it is owned by uid {info.st_uid}, not by this user "
            f"(uid {os.geteuid()}); chown it or choose another STREAMTOKEN_DATA_DIR"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePathError(
            f"streamtoken: refusing {what} {path}: it is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod go-w it"
        )


def ensure_private_dir(path: Path) -> Path:
    """``path`` as a directory only this user can enter: created ``0700``, or, when it exists, refused if
    another user owns it or others may write it, and else tightened to ``0700``."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        info = path.stat()
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafePathError(f"streamtoken: the data dir {path} is not a directory") from None
        _refuse_unsafe(path, info, "data dir")
        if stat.S_IMODE(info.st_mode) != 0o700:
            path.chmod(0o700)
    else:
        path.chmod(0o700)  # mkdir's mode is masked by the umask
    return path


def check_private_file(path: Path) -> Path:
    """``path`` if it is a file of this user that nobody else may write (raises :class:`UnsafePathError`
    otherwise). Call it before reading a secret file."""
    _refuse_unsafe(path, path.stat(), "file")
    return path


def read_private_file(path: Path) -> str:
    """The stripped text of a secret file, after :func:`check_private_file`."""
    return check_private_file(path).read_text().strip()


def create_private_file(path: Path) -> Path:
    """``path`` as an existing ``0600`` file of this user: created empty with ``0600`` (``O_EXCL``, so a
    planted symlink is not followed), or checked and tightened to ``0600`` if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        if not path.exists():  # a dangling symlink: creating the file would write where it points
            raise UnsafePathError(f"streamtoken: refusing {path}: a symlink to a missing file") from None
        check_private_file(path)
        if stat.S_IMODE(path.stat().st_mode) != 0o600:
            path.chmod(0o600)
    else:
        os.close(fd)
    return path


class RuntimeSettings(BaseSettings):
    """``STREAMTOKEN_ENV``, ``STREAMTOKEN_DATA_DIR``, ``STREAMTOKEN_LOG_LEVEL``, ``STREAMTOKEN_LOG_JSON``."""

    model_config = SettingsConfigDict(env_prefix="STREAMTOKEN_", extra="ignore")

    # prod by default: an unset variable must not fail open; the local stack and the tests set dev/test.
    env: Literal["dev", "test", "prod"] = Field(
        "prod", description="STREAMTOKEN_ENV: outside 'dev'/'test', development secrets are refused"
    )
    data_dir: Path = Field(Path(".streamtoken"), description="STREAMTOKEN_DATA_DIR: SQLite files, dev keys")
    log_level: str = Field("INFO", description="STREAMTOKEN_LOG_LEVEL")
    log_json: bool = Field(True, description="STREAMTOKEN_LOG_JSON: one JSON object a line")

    @property
    def is_dev(self) -> bool:
        return self.env in {"dev", "test"}

    def private_data_dir(self) -> Path:
        """The data dir, created ``0700`` or checked (:func:`ensure_private_dir`)."""
        return ensure_private_dir(self.data_dir)

    def sqlite_url(self, name: str) -> str:
        """The SQLAlchemy URL of ``<data dir>/<name>.db``; the file exists ``0600`` before SQLAlchemy opens
        it (SQLite gives its ``-wal``/``-shm`` files the database's mode), and those already there are
        checked and tightened too."""
        database = self.private_data_dir() / f"{name}.db"
        create_private_file(database)
        for suffix in ("-wal", "-shm", "-journal"):
            companion = database.with_name(database.name + suffix)
            if companion.exists():
                create_private_file(companion)
        return f"sqlite:///{database.resolve()}"

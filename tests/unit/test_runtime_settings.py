"""Safe defaults of shared.settings (SECURITY_REVIEW finding 8): prod unless told otherwise, a private data
dir, private SQLite files, and unsafe data dirs or secret files refused with one line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import sqlalchemy

from shared.settings import (
    RuntimeSettings,
    UnsafePathError,
    check_private_file,
    ensure_private_dir,
    read_private_file,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_unset_streamtoken_env_is_prod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMTOKEN_ENV", raising=False)
    runtime = RuntimeSettings()
    assert runtime.env == "prod"
    assert not runtime.is_dev
    monkeypatch.setenv("STREAMTOKEN_ENV", "dev")
    assert RuntimeSettings().is_dev


def test_the_data_dir_is_created_0700_and_sqlite_files_0600(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        url = RuntimeSettings(env="test", data_dir=tmp_path / "data" / "nested").sqlite_url("notifier")
    finally:
        os.umask(previous)
    database = tmp_path / "data" / "nested" / "notifier.db"
    assert url == f"sqlite:///{database.resolve()}"
    assert mode(database.parent) == 0o700
    assert mode(database) == 0o600
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")
        connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        connection.exec_driver_sql("INSERT INTO t VALUES (1)")
    for suffix in ("-wal", "-shm"):
        companion = database.with_name(database.name + suffix)
        if companion.exists():
            assert mode(companion) == 0o600, suffix
    engine.dispose()


def test_existing_loose_files_of_our_own_are_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "issuer.db").write_bytes(b"")
    (data / "issuer.db").chmod(0o644)
    (data / "issuer.db-wal").write_bytes(b"")
    (data / "issuer.db-wal").chmod(0o644)
    RuntimeSettings(env="test", data_dir=data).sqlite_url("issuer")
    assert mode(data) == 0o700
    assert mode(data / "issuer.db") == 0o600
    assert mode(data / "issuer.db-wal") == 0o600


@pytest.mark.parametrize("loose", [0o777, 0o775, 0o757])
def test_a_data_dir_others_may_write_is_refused_in_one_line(tmp_path: Path, loose: int) -> None:
    data = tmp_path / "shared"
    data.mkdir()
    data.chmod(loose)
    with pytest.raises(UnsafePathError) as refused:
        RuntimeSettings(env="test", data_dir=data).sqlite_url("notifier")
    message = str(refused.value)
    assert "\n" not in message
    assert str(data) in message
    assert "writable by group or others" in message
    assert not (data / "notifier.db").exists()


def test_a_secret_file_others_may_write_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "issuer-jwt.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    assert read_private_file(secret) == "s3cret"
    secret.chmod(0o622)
    with pytest.raises(UnsafePathError, match="writable by group or others"):
        read_private_file(secret)


def test_a_database_symlinked_elsewhere_is_not_followed_on_create(tmp_path: Path) -> None:
    data = ensure_private_dir(tmp_path / "data")
    target = tmp_path / "elsewhere.db"
    (data / "notifier.db").symlink_to(target)
    with pytest.raises(UnsafePathError, match="a symlink to a missing file"):
        RuntimeSettings(env="test", data_dir=data).sqlite_url("notifier")
    assert not target.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_a_data_dir_or_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "theirs"
    data.mkdir(mode=0o700)
    os.chown(data, 65534, 65534)
    with pytest.raises(UnsafePathError, match="owned by uid 65534"):
        RuntimeSettings(env="test", data_dir=data).sqlite_url("issuer")
    secret = tmp_path / "key"
    secret.write_text("k")
    os.chown(secret, 65534, 65534)
    with pytest.raises(UnsafePathError, match="owned by uid 65534"):
        check_private_file(secret)

"""Settings every service shares: where it runs (dev or prod), where local data lives, how it logs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RuntimeSettings(BaseSettings):
    """``STREAMTOKEN_ENV``, ``STREAMTOKEN_DATA_DIR``, ``STREAMTOKEN_LOG_LEVEL``, ``STREAMTOKEN_LOG_JSON``."""

    model_config = SettingsConfigDict(env_prefix="STREAMTOKEN_", extra="ignore")

    env: Literal["dev", "test", "prod"] = Field(
        "dev", description="STREAMTOKEN_ENV: outside 'dev'/'test', development secrets are refused"
    )
    data_dir: Path = Field(Path(".streamtoken"), description="STREAMTOKEN_DATA_DIR: SQLite files, dev keys")
    log_level: str = Field("INFO", description="STREAMTOKEN_LOG_LEVEL")
    log_json: bool = Field(True, description="STREAMTOKEN_LOG_JSON: one JSON object a line")

    @property
    def is_dev(self) -> bool:
        return self.env in {"dev", "test"}

    def sqlite_url(self, name: str) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.data_dir / f'{name}.db').resolve()}"

"""Contracts the streamtoken services agree on.

The event on the ``streaming-tokens`` topic, topic names and their configuration, the streaming-token
format and fingerprints, identifier rules, Kafka connection settings, logging, the HTTP conventions every
service follows, and the embedded broker launcher.
"""

import warnings as _warnings
from importlib import metadata as _metadata


def _version() -> str:
    try:
        return _metadata.version("streamtoken")  # pyproject.toml's [project] version: the one place
    except _metadata.PackageNotFoundError:  # pragma: no cover - a checkout that was never installed
        return "0+unknown"


__version__ = _version()


def _quiet_authlib() -> None:
    # quixstreams imports authlib's httpx integration, which warns at import that it is deprecated, with a
    # filter of its own set to "always": one line of noise at every service's start. Ours goes in front.
    try:
        from authlib.deprecate import AuthlibDeprecationWarning
    except ImportError:  # pragma: no cover - authlib comes with quixstreams
        return
    _warnings.filterwarnings(
        "ignore", message="The httpx module is deprecated", category=AuthlibDeprecationWarning
    )


_quiet_authlib()

"""``python -m services.notifier``: serve the notifier in the foreground, configured by the environment."""

from __future__ import annotations

from services.notifier.bootstrap import build_app
from services.notifier.settings import NotifierSettings
from shared.logs import configure_logging
from shared.web import serve


def main(host: str | None = None, port: int | None = None) -> None:
    settings = NotifierSettings()
    runtime = settings.runtime
    configure_logging("notifier", runtime.log_level, runtime.log_json)
    app = build_app(settings)
    serve(app, host or settings.host, port or settings.port, log_level=runtime.log_level.lower())


if __name__ == "__main__":
    main()

"""``python -m services.issuer``: run the issuer in the foreground with settings from the environment."""

from __future__ import annotations

import sys

from services.issuer.settings import IssuerSettings


def main(host: str | None = None, port: int | None = None) -> int:
    from services.issuer.bootstrap import build_app
    from services.issuer.secrets import SecretConfigError
    from shared.logs import configure_logging
    from shared.web import serve

    settings = IssuerSettings()
    configure_logging("issuer", settings.runtime.log_level, settings.runtime.log_json)
    try:
        app = build_app(settings)
    except SecretConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve(app, host or settings.host, port or settings.port, log_level=settings.runtime.log_level.lower())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m services.resolver``: run the resolver in the foreground with settings from the environment."""

from __future__ import annotations


def main(host: str | None = None, port: int | None = None) -> None:
    from services.resolver.bootstrap import build_app
    from services.resolver.credentials import PublicBrokerError
    from services.resolver.settings import ResolverSettings
    from shared.logs import configure_logging
    from shared.web import serve

    settings = ResolverSettings()
    configure_logging("resolver", settings.runtime.log_level, settings.runtime.log_json)
    try:
        app = build_app(settings)
    except PublicBrokerError as exc:
        raise SystemExit(f"streamtoken resolver: {exc}") from None
    serve(app, host or settings.host, port or settings.port)


if __name__ == "__main__":
    main()

"""The request and response bodies of the services' HTTP APIs, shared by each service's ``api.py`` and by
``shared.client``: one definition per body, so a client and its server cannot drift apart.

Free of FastAPI and of the services' modules (importing them costs milliseconds, not the service).
"""

__all__ = ["issuer", "notifier", "resolver"]

"""Our signatures verify with the third-party ``standardwebhooks`` package; settings parse and validate."""

import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from services.notifier.delivery import Signer
from services.notifier.domain import new_secret
from services.notifier.settings import NotifierSettings
from shared.kafka import KafkaSettings


def _headers(signer: Signer, secret: str, msg_id: str, body: str, timestamp: int) -> dict[str, str]:
    signature = signer.signature(secret, msg_id, timestamp, body.encode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature.decode(),
    }


def test_the_production_signer_verifies_with_the_standardwebhooks_package() -> None:
    """``Signer.signature`` is what ``DeliveryEngine.request`` signs every webhook with."""
    secret = new_secret()
    body = '{"type":"streaming_tokens.rotated","generation":2}'
    signer = Signer()
    headers = _headers(signer, secret, "msg_abc", body, int(time.time()))
    assert Webhook(secret).verify(body, headers) == {"type": "streaming_tokens.rotated", "generation": 2}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("2", "3"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_signature_is_hmac_sha256_over_id_timestamp_and_body() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    # the example from the Standard Webhooks specification
    body = '{"test": 2432232314}'
    assert Signer().signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body.encode()) == (
        b"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_the_signer_s_key_cache_never_mixes_secrets() -> None:
    """Decoded keys are cached (and the cache emptied when full): each secret still signs with its own."""
    signer = Signer(max_keys=2)
    secrets = [new_secret() for _ in range(5)]
    body = '{"generation":3}'
    for _ in range(2):
        for secret in secrets:
            headers = _headers(signer, secret, "msg_x", body, int(time.time()))
            assert Webhook(secret).verify(body, headers) == {"generation": 3}
            for other in secrets:
                if other != secret:
                    with pytest.raises(WebhookVerificationError):
                        Webhook(other).verify(body, headers)


def test_secrets_are_standard_webhooks_secrets() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert secret != new_secret()
    Webhook(secret)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "STREAMTOKEN_NOTIFIER_ALLOWED_WEBHOOK_HOSTS", " hooks.example.com, *.svc.local ,10.0.0.0/8"
    )
    monkeypatch.setenv("STREAMTOKEN_NOTIFIER_RESTART_CONCURRENCY", "3")
    settings = NotifierSettings()
    assert settings.allowed_webhook_hosts == ("hooks.example.com", "*.svc.local", "10.0.0.0/8")
    assert settings.restart_concurrency == 3
    assert settings.port == 8003


def test_kafka_and_runtime_settings_are_nested_and_read_the_shared_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS", "broker:29092")
    monkeypatch.setenv("STREAMTOKEN_KAFKA_TOPIC", "tokens-here")
    monkeypatch.setenv("STREAMTOKEN_ENV", "test")
    monkeypatch.setenv("STREAMTOKEN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("STREAMTOKEN_NOTIFIER_DATABASE_URL", raising=False)
    settings = NotifierSettings()
    assert settings.kafka.bootstrap_servers == "broker:29092"
    assert settings.kafka.topic == "tokens-here"
    assert settings.runtime.env == "test"
    assert settings.resolved_database_url() == f"sqlite:///{(tmp_path / 'data' / 'notifier.db').resolve()}"
    given = NotifierSettings(database_url="sqlite://", kafka=KafkaSettings(bootstrap_servers="other:1"))
    assert given.kafka.bootstrap_servers == "other:1"
    assert given.resolved_database_url() == "sqlite://"


def test_a_lease_shorter_than_a_request_is_refused() -> None:
    with pytest.raises(ValidationError, match="LEASE_SECONDS"):
        NotifierSettings(lease_seconds=5, request_timeout_seconds=10)

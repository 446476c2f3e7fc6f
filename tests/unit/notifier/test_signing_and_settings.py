"""Our signatures verify with the third-party ``standardwebhooks`` package; settings parse and validate."""

import time

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from services.notifier.delivery import Signer
from services.notifier.domain import new_secret
from services.notifier.settings import NotifierSettings


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


def test_a_lease_shorter_than_a_request_is_refused() -> None:
    with pytest.raises(ValidationError, match="LEASE_SECONDS"):
        NotifierSettings(lease_seconds=5, request_timeout_seconds=10)

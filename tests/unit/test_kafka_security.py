"""Kafka security settings to each client library's options (worker/kafka_security.py); the broker side is
tests/integration/test_kafka_sasl.py."""

from __future__ import annotations

import ssl

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from worker.kafka_security import client_options, faust_credentials, ssl_context
from worker.settings import KafkaSettings, Settings


def kafka(**env: str) -> KafkaSettings:
    return Settings.from_env({f"FINPULSE_KAFKA_{name.upper()}": value for name, value in env.items()}, env_file=None).kafka


SASL_SSL = {"security_protocol": "SASL_SSL", "sasl_username": "svc", "sasl_password": "s3cret"}


def test_plaintext_by_default_adds_nothing() -> None:
    settings = KafkaSettings()
    assert client_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(settings) is None
    assert ssl_context(settings) is None


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_sasl_ssl_gives_every_client_the_login_and_a_verifying_tls_context(mechanism: str) -> None:
    settings = kafka(**SASL_SSL, sasl_mechanism=mechanism)
    options = client_options(settings)
    context = options.pop("ssl_context")
    assert options == {"security_protocol": "SASL_SSL", "sasl_mechanism": mechanism,
                       "sasl_plain_username": "svc", "sasl_plain_password": "s3cret"}
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname

    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    faust_options = dict(credentials_to_aiokafka_auth(credentials))  # what Faust hands its own aiokafka clients
    assert isinstance(faust_options.pop("ssl_context"), ssl.SSLContext)
    assert faust_options == options


def test_sasl_plaintext_has_no_tls() -> None:
    settings = kafka(**{**SASL_SSL, "security_protocol": "SASL_PLAINTEXT"}, sasl_mechanism="PLAIN")
    assert "ssl_context" not in client_options(settings)
    assert dict(credentials_to_aiokafka_auth(faust_credentials(settings)))["security_protocol"] == "SASL_PLAINTEXT"


def test_ssl_without_sasl_and_the_hostname_check_off() -> None:
    settings = kafka(security_protocol="SSL", ssl_check_hostname="false")
    options = client_options(settings)
    assert set(options) == {"security_protocol", "ssl_context"} and not options["ssl_context"].check_hostname
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SSLCredentials)
    assert dict(credentials_to_aiokafka_auth(credentials))["security_protocol"] == "SSL"


def test_a_sasl_protocol_without_a_login_is_refused_when_read() -> None:
    with pytest.raises(ValidationError, match="FINPULSE_KAFKA_SASL_USERNAME"):
        kafka(security_protocol="SASL_SSL", sasl_username="svc")
    with pytest.raises(ValidationError):
        kafka(security_protocol="TLS")
    with pytest.raises(ValidationError):
        kafka(**SASL_SSL, sasl_mechanism="GSSAPI")


def test_a_missing_ca_file_fails_at_once() -> None:
    with pytest.raises(FileNotFoundError):
        client_options(kafka(**SASL_SSL, ssl_cafile="/nonexistent/ca.pem"))


def test_the_password_stays_out_of_repr() -> None:
    assert "s3cret" not in repr(kafka(**SASL_SSL)) and "s3cret" not in repr(Settings.from_env({}, env_file=None))


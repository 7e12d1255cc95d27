"""How every Kafka client reaches the brokers: TLS and SASL options from `KafkaSettings`, in each library's words.

The worker (Faust), replay and the outbox (aiokafka), and produce and the topic admin
(kafka-python) name the same options differently; building them here from one section
means no client can be left on PLAINTEXT when a production cluster wants SASL_SSL.
"""

from __future__ import annotations

import ssl
from typing import Any

from worker.settings import KafkaSettings


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of the SSL and SASL_SSL protocols (None without TLS): verifies the brokers, may present a cert."""
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(cafile=kafka.ssl_cafile)
    context.check_hostname = kafka.ssl_check_hostname
    if kafka.ssl_certfile:
        context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
    return context


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's and kafka-python's producers, consumers and admin client (the same names)."""
    options: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    context = ssl_context(kafka)
    if context is not None:
        options["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL_"):
        options.update(
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=kafka.sasl_password,
        )
    return options


def faust_credentials(kafka: KafkaSettings) -> Any:
    """Faust's `broker_credentials` (None for PLAINTEXT); Faust hands them to each of its aiokafka clients."""
    import faust  # deferred: only the worker runs Faust, the other clients should not pay for importing it

    context = ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL_"):
        return faust.SASLCredentials(
            username=kafka.sasl_username, password=kafka.sasl_password, mechanism=kafka.sasl_mechanism, ssl_context=context
        )
    return faust.SSLCredentials(context) if context is not None else None

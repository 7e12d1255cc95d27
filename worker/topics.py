"""Kafka names and admin: the brokers of a Faust URL, and the worker's topics, created up front."""

from __future__ import annotations

import logging

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from worker.kafka_security import client_options
from worker.settings import Settings

log = logging.getLogger(__name__)

STAGES = ("docs", "scored", "dlq", "aggregates", "alerts")


def bootstrap_servers(kafka_url: str) -> list[str]:
    """`kafka://h1:9092;h2:9092` (Faust style) to ['h1:9092', 'h2:9092'] (client style)."""
    hosts = []
    for part in kafka_url.replace(";", ",").split(","):
        part = part.strip()
        if part:
            hosts.append(part.split("://", 1)[-1])
    return hosts


def ensure_topics(settings: Settings, stages: tuple[str, ...] = STAGES) -> None:
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers(settings.kafka.url), client_id=f"{settings.app_id}-admin",
        **client_options(settings.kafka),
    )
    partitions = settings.kafka.topic_partitions
    try:
        existing = set(admin.list_topics())
        missing = [settings.topic(s) for s in stages if settings.topic(s) not in existing]
        for name in missing:
            try:
                admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
                log.info("created topic %s (%d partitions)", name, partitions)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()

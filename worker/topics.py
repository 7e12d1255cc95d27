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


def group_partitions(admin: KafkaAdminClient, group: str, topic: str) -> tuple[str, list[list[int]]]:
    """GROUP's state (`Stable`, `PreparingRebalance`, …) and, per member, its partitions of TOPIC, sorted."""
    info = admin.describe_groups([group])[group]
    held = [
        sorted(p for a in (member.get("member_assignment") or {}).get("assigned_partitions", [])
               if a["topic"] == topic for p in a["partitions"])
        for member in info.get("members") or []
    ]
    return info.get("group_state") or "", held


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

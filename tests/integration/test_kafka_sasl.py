"""Kafka over SASL_SSL, against the local broker's SASL listener (`finpulse services up`), with SCRAM-SHA-512 and PLAIN.

The worker (Faust and its alerts producer), `finpulse produce`, `finpulse replay` and the
topic admin take their TLS and SASL options from the same settings (worker/kafka_security.py);
here each of them reaches Kafka through the SASL_SSL listener only, verifying the broker's
certificate against the local CA, and a wrong password ends with an error that says so.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ops import services as local_services
from worker.samples import sample_items

from .conftest import ROOT, Pipeline, kafka_sasl_env

MECHANISMS = ("SCRAM-SHA-512", "PLAIN")


@pytest.fixture
def sasl_listener(services: None) -> None:
    """The local SASL_SSL listener, with the password `services up` made for it."""
    missing = None
    if not kafka_sasl_env("PLAIN"):
        missing = f"no Kafka password in {local_services.credentials_file()}"
    elif not local_services.is_running("kafka") or not _port_open(local_services.port("kafka-sasl")):
        missing = f"no SASL_SSL listener on 127.0.0.1:{local_services.port('kafka-sasl')}"
    if missing:
        message = f"{missing}: run `finpulse services up` (a broker started before passwords needs `restart kafka`)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def finpulse(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "worker", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finished(command: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str]:
    _, stderr = command.communicate(timeout=timeout)
    return command.returncode, stderr


@pytest.mark.parametrize(
    "mechanism", [pytest.param(m, marks=pytest.mark.worker_env(**kafka_sasl_env(m)), id=m) for m in MECHANISMS]
)
def test_worker_produce_and_replay_over_sasl_ssl(
    mechanism: str, sasl_listener: None, pipeline: Pipeline, tmp_path: Path
) -> None:
    env = pipeline.worker.env
    assert env["FINPULSE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and env["FINPULSE_KAFKA_SASL_MECHANISM"] == mechanism
    assert env["FINPULSE_KAFKA_URL"].endswith(f":{local_services.port('kafka-sasl')}")
    start = datetime.now(UTC) - timedelta(minutes=1)
    items = sample_items(30, seed=11, prefix=mechanism.lower())
    source = tmp_path / "items.jsonl"
    source.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")

    code, stderr = finished(finpulse(env, "produce", str(source)))
    assert code == 0, stderr[-3000:]
    pipeline.wait_stored(len(items))  # the worker consumed them over SASL_SSL

    end = datetime.now(UTC) + timedelta(minutes=1)
    code, stderr = finished(finpulse(env, "replay", "--from", start.isoformat(), "--to", end.isoformat(), "--no-webhooks"))
    assert code == 0, stderr[-3000:]
    assert f"read {len(items)}, stored {len(items)}" in " ".join(stderr.split())  # rich wraps lines
    assert pipeline.db.count() == len(items)


def test_a_wrong_password_is_refused_with_an_error_that_says_so(
    sasl_listener: None, tiny_model: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        **kafka_sasl_env("SCRAM-SHA-512"),
        "FINPULSE_KAFKA_SASL_PASSWORD": "not-the-password",
        "FINPULSE_NAMESPACE": f"t{uuid.uuid4().hex[:10]}",
        "FINPULSE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'store.db'}",
        "FINPULSE_REDIS_URL": "",
        "FINPULSE_MODEL_DIR": str(tiny_model),
    }
    source = tmp_path / "items.jsonl"
    source.write_text(json.dumps(sample_items(1, seed=12)[0]) + "\n", encoding="utf-8")
    now = datetime.now(UTC)
    # Both at once: kafka-python (produce) only gives up when its bootstrap times out.
    produce = finpulse(env, "produce", str(source))
    replay = finpulse(env, "replay", "--from", (now - timedelta(hours=1)).isoformat(), "--to", now.isoformat())
    for command in (replay, produce):
        code, stderr = finished(command)
        said = " ".join(stderr.split())
        assert code == 1 and f"Kafka at {env['FINPULSE_KAFKA_URL']}" in said, stderr[-3000:]
        assert "not-the-password" not in stderr
        if command is replay:  # aiokafka always names the cause; kafka-python only when it read the broker's answer
            assert "Authentication failed" in said, stderr[-3000:]

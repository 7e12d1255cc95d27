"""Apache Kafka in KRaft mode (one broker that is also its controller), run from Maven-resolved jars.

Kafka is the only server with no Debian package, so it needs the most care: its jars are
resolved once from ops/kafka/pom.xml into the services dir, its storage is formatted once,
and its config is rewritten on every start so that changed ports take effect.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import struct
import subprocess
import uuid
from pathlib import Path

from ops.services import process
from ops.services.config import HOST, dir_of, log_file, pid_file, port, say

CMDLINE_MARK = b"kafka.Kafka"
POM = Path(__file__).resolve().parents[1] / "kafka" / "pom.xml"  # ops/kafka/pom.xml, shipped as package data

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
"""

_KAFKA_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
auto.create.topics.enable=true
num.partitions=1
log.retention.hours=24
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""


def ready(port_: int) -> bool:
    """A Metadata (v4) request lists a live broker: only then can clients create topics and produce."""
    client_id = b"finpulse-services"
    request = struct.pack(">hhih", 3, 4, 1, len(client_id)) + client_id + struct.pack(">i?", 0, False)
    try:
        with socket.create_connection((HOST, port_), timeout=2) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", process.recv_exact(sock, 4))
            if not 12 <= size <= 1 << 20:
                return False
            correlation_id, _throttle_ms, brokers = struct.unpack(">iii", process.recv_exact(sock, 12))
    except OSError:
        return False
    return bool(correlation_id == 1 and brokers > 0)


def _libs() -> Path:
    """Broker jars, resolved once from Maven Central into the services dir."""
    libs = dir_of("kafka") / "libs"
    if libs.is_dir() and any(libs.iterdir()):
        return libs
    mvn = process.ensure(lambda: shutil.which("mvn"), "maven")
    staging = libs.with_name("libs.partial")  # renamed only when complete, so a failed run is retried
    shutil.rmtree(staging, ignore_errors=True)
    say("kafka: resolving jars with Maven (first run only)...")
    process.run(
        [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={staging}"],
        "kafka: Maven jar resolution",
    )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


def _java(main_class: str, *args: str) -> list[str]:
    java = process.ensure(lambda: shutil.which("java"), "default-jre-headless")
    config = dir_of("kafka") / "log4j2.properties"
    return [java, "-Xmx768m", "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={config}",
            "-cp", f"{_libs()}/*", main_class, *args]


def _cluster_id() -> str:
    """A Kafka Uuid (URL-safe base64, no padding); one starting with '-' would parse as an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _write_config() -> Path:
    """(Re)write the broker and logging config, so changed ports take effect on every start."""
    kafka_dir = dir_of("kafka")
    (kafka_dir / "logs").mkdir(parents=True, exist_ok=True)
    (kafka_dir / "log4j2.properties").write_text(_LOG4J2.format(log=log_file("kafka")))
    properties = kafka_dir / "server.properties"
    properties.write_text(_KAFKA_PROPERTIES.format(
        host=HOST, port=port("kafka"), controller_port=port("kafka-controller"), data=kafka_dir / "data"))
    return properties


def launch(timeout: float) -> None:
    """Format storage once, then start the KRaft broker+controller detached; readiness is polled."""
    properties = _write_config()
    command = _java("kafka.Kafka", str(properties))
    if not (dir_of("kafka") / "data" / "meta.properties").exists():
        say("kafka: formatting storage (first run only)...")
        process.run(_java("kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(properties)),
                    "kafka: storage format")
    with open(dir_of("kafka") / "logs" / "kafka.out", "ab") as out:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 cwd=dir_of("kafka"), start_new_session=True)
    pid_file("kafka").write_text(f"{child.pid}\n")


def stop(pid: int) -> None:
    process.terminate("kafka", pid, lambda: os.kill(pid, signal.SIGTERM))
    pid_file("kafka").unlink(missing_ok=True)

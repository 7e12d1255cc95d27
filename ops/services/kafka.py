"""Apache Kafka in KRaft mode (one broker that is also its controller), run from Maven-resolved jars.

Kafka is the only server with no Debian package, so it needs the most care: its jars are
resolved once from ops/kafka/pom.xml into the services dir, its storage is formatted once,
and its config is rewritten on every start so that changed ports take effect.

Two client listeners: PLAINTEXT on the loopback port for local use, and SASL_SSL (SCRAM-SHA-512
and PLAIN, user finpulse with the credentials file's password) with a certificate
from a local CA made once, so the worker's production security settings can be tested here.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import uuid
from pathlib import Path

from ops.services import process
from ops.services.config import (
    HOST,
    KAFKA_USER,
    credentials,
    dir_of,
    kafka_cafile,
    log_file,
    pid_file,
    port,
    say,
    write_private,
)

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
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port},SASL_SSL://{host}:{sasl_port}
advertised.listeners=PLAINTEXT://{host}:{port},SASL_SSL://{host}:{sasl_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required \\
    user_{user}="{password}";
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location={keystore}
listener.name.sasl_ssl.ssl.keystore.password={keystore_password}
listener.name.sasl_ssl.ssl.key.password={keystore_password}
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


def _tls() -> Path:
    """The broker's keystore: a key and a certificate for 127.0.0.1 and localhost signed by a local CA, made once.

    Java's keytool makes them (Java is here for Kafka anyway); the CA's key is deleted once it has signed,
    and its certificate (kafka_cafile) is what clients trust. Passwords go in through the environment.
    """
    tls = kafka_cafile().parent
    keystore = tls / "broker.p12"
    if keystore.exists():
        return keystore
    keytool = process.ensure(lambda: shutil.which("keytool"), "default-jre-headless")
    staging = tls.with_name("tls.partial")  # renamed only when complete, so a failed run is retried
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    env = {**os.environ, "FINPULSE_KEYSTORE_PASSWORD": credentials()["kafka-keystore"]}

    def keytool_run(*args: str, input: str | None = None) -> str:
        return process.run([keytool, *args, "-storepass:env", "FINPULSE_KEYSTORE_PASSWORD"],
                           f"kafka: keytool {args[0]}", input=input, env=env, cwd=staging)

    new_key = ["-genkeypair", "-storetype", "PKCS12", "-keyalg", "RSA", "-keysize", "2048", "-validity", "3650"]
    say("kafka: making a local CA and the SASL_SSL listener's certificate (first run only)...")
    keytool_run(*new_key, "-alias", "ca", "-dname", "CN=finpulse local CA", "-ext", "bc:c", "-keystore", "ca.p12")
    keytool_run("-exportcert", "-rfc", "-alias", "ca", "-keystore", "ca.p12", "-file", kafka_cafile().name)
    keytool_run(*new_key, "-alias", "broker", "-dname", f"CN={HOST}", "-keystore", keystore.name)
    signed = keytool_run(
        "-gencert", "-rfc", "-validity", "3650", "-alias", "ca", "-keystore", "ca.p12",
        "-ext", f"SAN=IP:{HOST},DNS:localhost", "-ext", "KU=digitalSignature,keyEncipherment", "-ext", "EKU=serverAuth",
        input=keytool_run("-certreq", "-alias", "broker", "-keystore", keystore.name))
    keytool_run("-importcert", "-noprompt", "-alias", "ca", "-file", kafka_cafile().name, "-keystore", keystore.name)
    keytool_run("-importcert", "-alias", "broker", "-keystore", keystore.name, input=signed)
    (staging / "ca.p12").unlink()
    shutil.rmtree(tls, ignore_errors=True)
    staging.rename(tls)
    return keystore


def _write_config() -> Path:
    """(Re)write the broker and logging config, so changed ports take effect on every start; owner-only (passwords)."""
    kafka_dir = dir_of("kafka")
    (kafka_dir / "logs").mkdir(parents=True, exist_ok=True)
    (kafka_dir / "log4j2.properties").write_text(_LOG4J2.format(log=log_file("kafka")))
    properties = kafka_dir / "server.properties"
    found = credentials()
    write_private(properties, _KAFKA_PROPERTIES.format(
        host=HOST, port=port("kafka"), controller_port=port("kafka-controller"), sasl_port=port("kafka-sasl"),
        data=kafka_dir / "data", user=KAFKA_USER, password=found["kafka"], keystore=_tls(),
        keystore_password=found["kafka-keystore"]))
    return properties


def outdated() -> bool:
    """Ours, but started before the SASL_SSL listener existed."""
    try:
        return "SASL_SSL://" not in (dir_of("kafka") / "server.properties").read_text()
    except OSError:
        return False


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


def after_ready() -> None:
    """Give the SCRAM user its password, once per cluster and password.

    KRaft keeps SCRAM credentials in its metadata log, not in a config file, and a cluster
    formatted before the SASL_SSL listener has none, so they are set through the admin API.
    """
    password = credentials()["kafka"]
    meta = (dir_of("kafka") / "data" / "meta.properties").read_text()
    done = dir_of("kafka") / "scram-user"
    digest = hashlib.sha256(f"{meta}\0{KAFKA_USER}\0{password}".encode()).hexdigest()
    if done.exists() and done.read_text().strip() == digest:
        return
    request = dir_of("kafka") / "scram-user.properties"  # the password stays off the command line
    write_private(request, f"SCRAM-SHA-512=password={password}\n")
    try:
        process.run(_java("kafka.admin.ConfigCommand", "--bootstrap-server", f"{HOST}:{port('kafka')}", "--alter",
                          "--entity-type", "users", "--entity-name", KAFKA_USER, "--add-config-file", str(request)),
                    "kafka: SCRAM credentials")
    finally:
        request.unlink(missing_ok=True)
    done.write_text(digest + "\n")
    say(f"kafka: SCRAM user {KAFKA_USER} set on {HOST}:{port('kafka-sasl')} (SASL_SSL)")


def stop(pid: int) -> None:
    process.terminate("kafka", pid, lambda: os.kill(pid, signal.SIGTERM))
    pid_file("kafka").unlink(missing_ok=True)

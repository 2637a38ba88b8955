"""Fixtures for the registry suite: a real S3-compatible server (moto's, from
the venv) on 127.0.0.1, buckets, and real `sluice serve` gateways whose
`--models` is an `s3://` URL.

The server helpers of tests/oip (oiphelpers: start_server, Load, publish_cli,
...) are reused, not copied. The AWS_* variables set here reach every child
process through them.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "oip"))
import oiphelpers as h  # noqa: E402

MOTO = Path(sys.executable).parent / "moto_server"
ADMIN_KEY = "registry-suite-admin-" + secrets.token_hex(8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3 server on a loopback port; `stop()` and `start()` take it
    down and bring it back (empty) on the same port."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.log_dir = log_dir
        self.proc = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"moto-{time.monotonic_ns()}.log", "wb")
        self.proc = subprocess.Popen(
            [str(MOTO), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
                time.sleep(0.1)
        raise RuntimeError("moto_server did not listen within 30 s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")

    def use(self):
        """Points this process's environment (and so every child's) here."""
        os.environ.update({
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        })


# Servers' logs in failure reports (shared with tests/oip).
from oiphelpers import pytest_runtest_makereport  # noqa: E402,F401


def pytest_sessionstart(session):
    h.pytest_sessionstart(session)
    if not MOTO.is_file():
        raise pytest.UsageError(f"{MOTO} is missing: run scripts/setup-venv.sh")


def pytest_terminal_summary(terminalreporter):
    if h.SUMMARY:
        terminalreporter.section("registry on object storage")
        for line in h.SUMMARY:
            terminalreporter.write_line(line)


@pytest.fixture
def s3(tmp_path):
    """A fresh S3 server of the test's own (tests may stop and restart it)."""
    server = S3Server(tmp_path / "moto")
    server.use()
    yield server
    server.stop()


@dataclass
class Registry:
    url: str
    bucket: str
    prefix: str
    s3: S3Server

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    def put(self, rel: str, data: bytes):
        self.s3.client().put_object(Bucket=self.bucket, Key=self.key(rel), Body=data)

    def delete(self, rel: str):
        self.s3.client().delete_object(Bucket=self.bucket, Key=self.key(rel))

    def cli(self, *args, timeout=60) -> subprocess.CompletedProcess:
        return subprocess.run([str(h.require_binary()), *map(str, args)], capture_output=True,
                              text=True, timeout=timeout, env=h.clean_env())

    def publish(self, model: str, src: Path, version: int | None = None) -> int:
        args = ["models", "publish", model, src, "--models", self.url]
        if version is not None:
            args += ["--version", version]
        done = self.cli(*args)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split(" version ")[1].split()[0])


@pytest.fixture
def registry(s3):
    bucket = "sluice-" + secrets.token_hex(4)
    s3.client().create_bucket(Bucket=bucket)
    return Registry(url=f"s3://{bucket}/prod", bucket=bucket, prefix="prod", s3=s3)


@pytest.fixture
def gateways(tmp_path):
    """gateways(registry_url, n=1, poll_ms=400) starts n gateways on the
    registry, each with a cache of its own; all are stopped at the end."""
    started = []
    keys = tmp_path / "admin.keys"
    keys.write_text(f"suite:{ADMIN_KEY}\n")

    def make(url: str, n: int = 1, poll_ms: int = 400, cache: Path | None = None):
        out = []
        for i in range(n):
            name = f"gw{len(started)}"
            s = h.start_server(url, tmp_path / name / "logs", extra_args=[
                "--registry-cache", cache or (tmp_path / name / "cache"),
                "--registry-poll-ms", poll_ms,
                "--admin-keys-file", keys,
                "--no-collector",
            ])
            started.append(s)
            out.append(s)
        return out

    yield make
    for s in started:
        s.stop()

"""Fixtures for the signed-manifest suite.

Servers are started by the OIP suite's helpers (`tests/oip/oiphelpers.py`),
and the S3 server by the registry suite's `S3Server` (`tests/registry/
conftest.py`), both imported by path, not copied.

* `keys`: makes Ed25519 key pairs, with the `cryptography` package
  (`keys.crypto(name)`) or with `sluice models keygen` (`keys.keygen(name)`),
  and writes trusted-keys bundles (`keys.bundle(...)`).
* `make_server`: `sluice serve` over a repository, stopped at the end.
* `s3`: a fresh moto S3 server (skipped when moto is not installed).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "oip"))

import oiphelpers as h  # noqa: E402

# Shared hooks: fail fast without the binary; servers' logs in failure reports.
from oiphelpers import pytest_runtest_makereport, pytest_sessionstart  # noqa: E402,F401

SCALE = {v: h.FIXTURE_MODELS / "scale" / str(v) / "model.onnx" for v in (1, 2, 3)}
WAIT_S = 30.0


def sluice(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([str(h.require_binary()), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=h.clean_env())


def raw_key_id(raw: bytes) -> str:
    """A key's id: the first 16 hex digits of SHA-256 over its 32 raw bytes."""
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass
class KeyPair:
    name: str
    private: Path  # PKCS#8 PEM
    public: Path  # SPKI PEM
    key_id: str

    def public_key(self):
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
        return load_pem_public_key(self.public.read_bytes())


class Keys:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def crypto(self, name: str) -> KeyPair:
        """A key pair made by the `cryptography` package, in the standard
        encodings (as openssl writes them)."""
        from cryptography.hazmat.primitives import serialization as s
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        private = self.root / f"{name}.pem"
        public = self.root / f"{name}.pub.pem"
        private.write_bytes(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8,
                                              s.NoEncryption()))
        public.write_bytes(key.public_key().public_bytes(s.Encoding.PEM,
                                                         s.PublicFormat.SubjectPublicKeyInfo))
        raw = key.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
        return KeyPair(name, private, public, raw_key_id(raw))

    def keygen(self, name: str, with_name: bool = True) -> KeyPair:
        """A key pair made by `sluice models keygen --out PREFIX`."""
        prefix = self.root / name
        args = ["models", "keygen", "--out", prefix] + (["--name", name] if with_name else [])
        done = sluice(*args)
        assert done.returncode == 0, done.stderr
        key_id = done.stdout.split("key ", 1)[1].split(":", 1)[0]
        return KeyPair(name, Path(f"{prefix}.key"), Path(f"{prefix}.pub"), key_id)

    def bundle(self, *pairs: KeyPair, name="trusted.pem", named=True) -> Path:
        """A trusted-keys file: the public keys one after the other, each
        named by a `# name:` line (keygen's .pub files carry their own)."""
        parts = []
        for p in pairs:
            text = p.public.read_text()
            if named and not text.startswith("# name:"):
                text = f"# name: {p.name}\n{text}"
            parts.append(text)
        path = self.root / name
        path.write_text("\n".join(parts))
        return path


@pytest.fixture
def keys(tmp_path) -> Keys:
    return Keys(tmp_path / "keys")


def publish(models, model: str, src: Path, version: int | None = None,
            sign: Path | None = None) -> subprocess.CompletedProcess:
    args = ["models", "publish", model, src, "--models", models]
    if version is not None:
        args += ["--version", version]
    if sign is not None:
        args += ["--sign", sign]
    return sluice(*args)


def publish_ok(models, model, src, version=None, sign=None) -> str:
    done = publish(models, model, src, version, sign)
    assert done.returncode == 0, done.stderr
    return done.stdout


def index(server) -> list:
    status, _, body = server.request("POST", "/v2/repository/index", b"{}")
    assert status == 200, body
    return json.loads(body)


def entry(server, model: str, version: int) -> dict | None:
    for e in index(server):
        if e["name"] == model and e["version"] == str(version):
            return e
    return None


def wait_for_entry(server, model: str, version: int, states=("READY", "UNAVAILABLE"),
                   timeout=WAIT_S) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = entry(server, model, version)
        if last and last["state"] in states:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{model} version {version} not in {states} within {timeout}s: {last}\n"
                         f"{server.stderr_tail()}")


def serving_version(server) -> str:
    status, answer = h.infer_scale_raw(server.port, h.X)
    assert status == 200, answer
    return answer["model_version"]


def signature_of(version_dir: Path) -> dict:
    sig = json.loads((version_dir / "manifest.sig").read_text())
    sig["raw"] = base64.b64decode(sig["signature"])
    return sig


@pytest.fixture
def make_server(tmp_path):
    started = []

    def make(models, extra_args=(), name="gw"):
        s = h.start_server(models, tmp_path / name / "logs", extra_args=extra_args)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def _registry_suite():
    """tests/registry/conftest.py as a module of its own name (not
    `conftest`, which is ours), for its S3Server."""
    path = TESTS / "registry" / "conftest.py"
    spec = importlib.util.spec_from_file_location("sluice_registry_suite", path)
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def s3(tmp_path):
    suite = _registry_suite()
    if not suite.MOTO.is_file():
        pytest.skip(f"{suite.MOTO} is missing (scripts/setup-venv.sh installs moto)")
    server = suite.S3Server(tmp_path / "moto")
    server.use()
    yield server
    server.stop()

"""Signed manifests end to end: keys from `cryptography` and from `sluice
models keygen`, `sluice models publish --sign`, and `sluice serve
--trusted-keys` loading only versions whose manifest.sig verifies with a
trusted key, on a local repository and on object storage."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess

import oiphelpers as h
from conftest import (SCALE, publish, publish_ok, raw_key_id, serving_version, signature_of,
                      sluice, wait_for_entry)


def test_keygen_writes_standard_pem_that_cryptography_reads(keys):
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                                   Ed25519PublicKey)

    pair = keys.keygen("alice")
    assert stat.S_IMODE(os.stat(pair.private).st_mode) == 0o600
    private_text = pair.private.read_text()
    assert private_text.startswith("-----BEGIN PRIVATE KEY-----\n"), private_text[:40]
    private = s.load_pem_private_key(private_text.encode(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    public_text = pair.public.read_text()
    assert public_text.startswith("# name: alice\n-----BEGIN PUBLIC KEY-----\n"), public_text
    public = s.load_pem_public_key(public_text.split("\n", 1)[1].encode())
    assert isinstance(public, Ed25519PublicKey)
    raw = public.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    assert raw == private.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    assert pair.key_id == raw_key_id(raw)

    # Existing keys are never overwritten.
    again = sluice("models", "keygen", "--out", keys.root / "alice")
    assert again.returncode != 0 and "exists" in again.stderr, again
    assert pair.private.read_text() == private_text


def test_publish_sign_writes_a_detached_signature_over_the_manifest_bytes(keys, tmp_path):
    from cryptography.exceptions import InvalidSignature

    pair = keys.crypto("release")
    models = tmp_path / "models"
    models.mkdir()
    out = publish_ok(models, "scale", SCALE[1], sign=pair.private)
    assert f"signed with key {pair.key_id}" in out, out
    version_dir = models / "scale" / "1"
    sig = signature_of(version_dir)
    assert set(sig) - {"raw"} == {"schema", "algorithm", "key_id", "signature"}, sig
    assert (sig["schema"], sig["algorithm"], sig["key_id"]) == (1, "ed25519", pair.key_id)
    manifest = (version_dir / "manifest.json").read_bytes()
    pair.public_key().verify(sig["raw"], manifest)  # raises if it does not verify
    try:
        pair.public_key().verify(sig["raw"], manifest + b" ")
        raise AssertionError("a changed manifest verified")
    except InvalidSignature:
        pass

    # A bad key publishes nothing.
    bad = tmp_path / "bad.pem"
    bad.write_text(pair.public.read_text())  # a public key is not a signing key
    done = publish(models, "scale", SCALE[2], sign=bad)
    assert done.returncode != 0 and "private key" in done.stderr, done
    assert not (models / "scale" / "2").exists()
    assert not [p for p in (models / "scale").iterdir() if p.name.startswith(".")]


def one_byte_changed(manifest: bytes) -> bytes:
    """The manifest with one byte changed: the last digit of the year it
    was created (still valid JSON, still matching the model file)."""
    out = bytearray(manifest)
    at = out.index(b'"created": "') + len(b'"created": "') + 3
    out[at] = ord("1") if out[at] != ord("1") else ord("2")
    assert sum(a != b for a, b in zip(out, manifest)) == 1 and len(out) == len(manifest)
    return bytes(out)


def stage_elsewhere(tmp_path, models, version, sign=None, edit=None):
    """Publishes scale `version` into a scratch repository, lets `edit`
    change its files, then renames the version directory into `models`
    (same filesystem: it appears atomically, so the server never sees it
    before the change)."""
    scratch = tmp_path / f"scratch-{version}"
    scratch.mkdir()
    publish_ok(scratch, "scale", SCALE[1 + (version - 1) % 3], version=version, sign=sign)
    src = scratch / "scale" / str(version)
    if edit is not None:
        edit(src)
    os.rename(src, models / "scale" / str(version))
    shutil.rmtree(scratch)


def tamper(version_dir):
    path = version_dir / "manifest.json"
    path.write_bytes(one_byte_changed(path.read_bytes()))


def garble_signature(version_dir):
    (version_dir / "manifest.sig").write_text('{"schema": 1, "algorithm": "ed25519"}')


def test_only_versions_signed_by_a_trusted_key_load(keys, make_server, tmp_path):
    alice = keys.crypto("alice")  # cryptography
    bob = keys.keygen("bob")  # sluice models keygen --name bob
    mallory = keys.keygen("mallory")  # not trusted
    bundle = keys.bundle(alice, bob)

    models = tmp_path / "models"
    models.mkdir()
    publish_ok(models, "scale", SCALE[1], version=1, sign=alice.private)
    gw = make_server(models, extra_args=["--trusted-keys", bundle])
    e = wait_for_entry(gw, "scale", 1)
    assert e["state"] == "READY" and e["verified"] is True, e
    assert e["signer"] == f"alice (key {alice.key_id})", e  # verified, named
    assert serving_version(gw) == "1"
    assert alice.key_id in gw.stderr_tail(200)  # the log names the signer

    # Changed by one byte after signing: refused, version 1 keeps serving.
    stage_elsewhere(tmp_path, models, 2, sign=alice.private, edit=tamper)
    e = wait_for_entry(gw, "scale", 2)
    assert e["state"] == "UNAVAILABLE", e
    assert "does not verify (manifest changed after signing?)" in e["reason"], e
    assert f"alice (key {alice.key_id})" in e["reason"], e
    assert serving_version(gw) == "1"

    # Signed by a key that is not trusted.
    stage_elsewhere(tmp_path, models, 3, sign=mallory.private)
    e = wait_for_entry(gw, "scale", 3)
    assert e["state"] == "UNAVAILABLE", e
    assert f"signed by an untrusted key {mallory.key_id}" in e["reason"], e
    assert serving_version(gw) == "1"

    # Not signed at all (published by the CLI straight into the repository).
    publish_ok(models, "scale", SCALE[1], version=4)
    e = wait_for_entry(gw, "scale", 4)
    assert e["state"] == "UNAVAILABLE", e
    assert "unsigned: manifest.sig is missing" in e["reason"], e
    assert serving_version(gw) == "1"

    # A malformed signature file.
    stage_elsewhere(tmp_path, models, 5, sign=bob.private, edit=garble_signature)
    e = wait_for_entry(gw, "scale", 5)
    assert e["state"] == "UNAVAILABLE" and "malformed signature file" in e["reason"], e

    # Signed by the other trusted key (from keygen): loads and takes over.
    stage_elsewhere(tmp_path, models, 6, sign=bob.private)
    e = wait_for_entry(gw, "scale", 6)
    assert e["state"] == "READY" and e["verified"] is True, e
    assert e["signer"] == f"bob (key {bob.key_id})", e
    assert serving_version(gw) == "6"


def test_the_trusted_keys_setting_from_env_and_config_and_bad_files(keys, tmp_path, make_server):
    alice = keys.keygen("alice")
    models = tmp_path / "models"
    models.mkdir()
    publish_ok(models, "scale", SCALE[1], version=1, sign=alice.private)
    publish_ok(models, "scale", SCALE[2], version=2)  # unsigned, newer

    # From the config file (relative to it): version 2 is refused, 1 serves.
    config = tmp_path / "sluice.toml"
    shutil.copy(alice.public, tmp_path / "trusted.pem")
    config.write_text('trusted_keys = "trusted.pem"\n')
    gw = make_server(models, extra_args=["--config", config], name="cfg")
    assert wait_for_entry(gw, "scale", 2)["state"] == "UNAVAILABLE"
    assert serving_version(gw) == "1"
    gw.stop()

    # Without trusted keys, signatures are not checked: both load, 2 serves.
    gw = make_server(models, name="open")
    assert wait_for_entry(gw, "scale", 2)["state"] == "READY"
    assert serving_version(gw) == "2"
    gw.stop()

    # A trusted-keys file that is not one stops the server at start.
    for bad, expected in [(alice.private, "private key"), (tmp_path / "missing.pem", "missing.pem"),
                          (config, "text outside a PEM block")]:
        done = sluice("serve", "--models", models, "--http-addr", "127.0.0.1:0",
                      "--trusted-keys", bad, timeout=30)
        assert done.returncode != 0 and expected in done.stderr, (bad, done.stderr[-2000:])
    env = {**h.clean_env(), "SLUICE_TRUSTED_KEYS": str(alice.private)}
    done = subprocess.run([str(h.require_binary()), "serve", "--models", str(models),
                           "--http-addr", "127.0.0.1:0"], capture_output=True, text=True,
                          timeout=30, env=env)
    assert done.returncode != 0 and "private key" in done.stderr, done.stderr[-2000:]


def test_signed_versions_on_object_storage(keys, s3, tmp_path):
    alice = keys.crypto("alice")
    mallory = keys.crypto("mallory")
    bundle = keys.bundle(alice)
    bucket = "sluice-" + secrets.token_hex(4)
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/prod"

    out = publish_ok(url, "scale", SCALE[1], sign=alice.private)
    assert "version 1" in out and alice.key_id in out, out
    sig = json.loads(client.get_object(Bucket=bucket, Key="prod/scale/1/manifest.sig")["Body"].read())
    assert sig["key_id"] == alice.key_id
    # The signature went up before the manifest (written last).
    heads = {k: client.head_object(Bucket=bucket, Key=f"prod/scale/1/{k}")["LastModified"]
             for k in ("manifest.sig", "manifest.json")}
    assert heads["manifest.sig"] <= heads["manifest.json"], heads

    gw = h.start_server(url, tmp_path / "gw" / "logs", extra_args=[
        "--registry-cache", tmp_path / "gw" / "cache", "--registry-poll-ms", 300,
        "--no-collector", "--trusted-keys", bundle])
    try:
        e = wait_for_entry(gw, "scale", 1)
        assert e["state"] == "READY" and e["verified"] is True, e
        assert (tmp_path / "gw" / "cache" / "scale" / "1" / "manifest.sig").is_file()
        assert serving_version(gw) == "1"

        # Signed by an untrusted key: synced, refused, version 1 serves.
        publish_ok(url, "scale", SCALE[2], sign=mallory.private)
        e = wait_for_entry(gw, "scale", 2)
        assert e["state"] == "UNAVAILABLE", e
        assert f"signed by an untrusted key {mallory.key_id}" in e["reason"], e
        assert serving_version(gw) == "1"

        # A version whose manifest.json was changed by one byte after
        # signing, uploaded as a publisher would (manifest last).
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        publish_ok(scratch, "scale", SCALE[3], version=3, sign=alice.private)
        src = scratch / "scale" / "3"
        manifest = one_byte_changed((src / "manifest.json").read_bytes())
        for name, data in [("model.onnx", (src / "model.onnx").read_bytes()),
                           ("manifest.sig", (src / "manifest.sig").read_bytes()),
                           ("manifest.json", manifest)]:
            client.put_object(Bucket=bucket, Key=f"prod/scale/3/{name}", Body=data)
        e = wait_for_entry(gw, "scale", 3)
        assert e["state"] == "UNAVAILABLE", e
        assert "does not verify (manifest changed after signing?)" in e["reason"], e
        assert serving_version(gw) == "1"
    finally:
        gw.stop()

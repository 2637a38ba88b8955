"""Rollouts end to end: a real `sluice serve` driven by the real CLI.

* `sluice rollout set|status|rollback|promote` change which version answers
  (the `sluice-model-version` / `x-sluice-variant` headers and the values:
  `scale` vN computes y = x * N); refused changes and wrong keys make the
  CLI exit non-zero with the server's own message; the admin key shows up
  in no output and no server log;
* `sluice audit verify` checks the hash chain of DIR/audit.log and names the
  line where one changed byte breaks it; `sluice audit show` lists the
  actions in order;
* a shadow at 100% (`--shadow 3:100:values`) is compared on every request,
  and `sluice rollout diffs` reports the differences the test expects from
  the inputs it sent;
* `sluice rollout start` under background traffic steps the canary through
  its weights and promotes it, and the audit log names who did what.

No test asserts anything about timing: the waits are bounds.
"""

from __future__ import annotations

import json
import threading

X = [1.0, 2.0, 3.0, 4.0]


def scaled(x, k):
    return [v * k for v in x]


def assert_answered_by(r, version: int, variant: str, x=X):
    assert r.status == 200, r.body
    assert r.version == str(version), (r.version, r.body)
    assert r.variant == variant, (r.variant, r.body)
    assert r.body["model_version"] == str(version), r.body
    assert r.body["outputs"][0]["data"] == scaled(x, version), r.body


def assert_no_key_anywhere(gw, *keys):
    """None of `keys` in any CLI output so far, nor in the server's log."""
    for argv, r in gw.cli_calls:
        for key in keys:
            assert key not in r.stdout and key not in r.stderr, (
                f"`{' '.join(argv[1:])}` printed an admin key")
    log = gw.log_text()
    for key in keys:
        assert key not in log, f"the server's log ({gw.stderr_path}) holds an admin key"


# ---------------------------------------------------------------------------


def test_set_rollback_promote_through_the_cli(gateway, tmp_path):
    # Debug logs: a key must not leak even there.
    gw = gateway(versions=[1, 2], log="debug,ort=warn")

    status = gw.cli_json("rollout", "status", "scale")
    assert status["policy"] is None and status["rollout"] is None, status
    assert status["ready_versions"] == [1, 2], status

    # All traffic to the canary.
    answer = gw.cli_json("rollout", "set", "scale", "--stable", "1", "--canary", "2", "--weight", "1.0")
    assert answer["policy"] == {"stable": 1, "canary": {"version": 2, "weight": 1.0}}, answer
    for _ in range(5):
        assert_answered_by(gw.infer(X), 2, "canary")

    # Rollback takes effect on the next request.
    gw.cli_ok("rollout", "rollback", "scale")
    assert_answered_by(gw.infer(X), 1, "stable")
    status = gw.cli_json("rollout", "status", "scale")
    assert status["policy"]["canary"] == {"version": 2, "weight": 0.0}, status
    assert status["stable"] == 1, status

    # The canary again, then promoted: stable becomes 2.
    gw.cli_ok("rollout", "set", "scale", "--canary", "2", "--weight", "1.0")
    assert_answered_by(gw.infer(X), 2, "canary")
    gw.cli_ok("rollout", "promote", "scale")
    status = gw.cli_json("rollout", "status", "scale")
    assert status["stable"] == 2, status
    assert status["policy"]["stable"] == 2 and status["policy"].get("canary") is None, status
    assert_answered_by(gw.infer(X), 2, "stable")

    # A refused change: non-zero exit, the server's own message, nothing changed.
    code, refusal = gw.admin("PUT", "/admin/models/scale/policy",
                             {"stable": 2, "canary": {"version": 9, "weight": 0.5}})
    assert code == 400, refusal
    r = gw.cli("rollout", "set", "scale", "--canary", "9", "--weight", "0.5")
    assert r.returncode != 0, r
    assert refusal["error"] in r.stderr, (refusal, r.stderr)
    assert "400" in r.stderr, r.stderr
    assert gw.cli_json("rollout", "status", "scale")["policy"] == {"stable": 2}
    assert_answered_by(gw.infer(X), 2, "stable")

    # A wrong key, from the environment and from a file: refused, with the
    # server's message, and nothing changed.
    wrong = "rk-" + "0" * 32
    code, denial = gw.admin("GET", "/admin/models/scale/policy", key=wrong)
    assert code == 401, denial
    for kw in ({"key": wrong},
               {"key": None, "env": {"SLUICE_ADMIN_KEY_FILE": str(tmp_path / "wrong.key")}}):
        (tmp_path / "wrong.key").write_text(wrong + "\n")
        r = gw.cli("rollout", "set", "scale", "--canary", "1", "--weight", "1.0", **kw)
        assert r.returncode != 0, r
        assert denial["error"] in r.stderr and "401" in r.stderr, r.stderr
        r = gw.cli("rollout", "status", "scale", **kw)
        assert r.returncode != 0 and denial["error"] in r.stderr, r.stderr
    (tmp_path / "wrong.key").unlink()
    assert gw.cli_json("rollout", "status", "scale")["policy"] == {"stable": 2}

    # No key at all: the CLI says where a key comes from.
    r = gw.cli("rollout", "status", "scale", key=None)
    assert r.returncode != 0 and "SLUICE_ADMIN_KEY" in r.stderr, r.stderr

    # The right key from a file works too.
    (tmp_path / "good.key").write_text(gw.key + "\n")
    gw.cli_ok("rollout", "status", "scale", key=None, env={"SLUICE_ADMIN_KEY_FILE": str(tmp_path / "good.key")})

    assert_no_key_anywhere(gw, gw.key, wrong)


def test_audit_verify_and_show(gateway):
    gw = gateway(versions=[1, 2])
    gw.cli_ok("rollout", "set", "scale", "--stable", "1", "--canary", "2", "--weight", "1.0")
    gw.cli_ok("rollout", "rollback", "scale")
    gw.cli_ok("rollout", "set", "scale", "--canary", "2", "--weight", "1.0")
    gw.cli_ok("rollout", "promote", "scale")
    expected = ["policy.set", "rollback", "policy.set", "promote"]

    records = gw.cli_json("audit", "show", "--model", "scale")
    assert [r["action"] for r in records] == expected, records
    assert [r["seq"] for r in records] == [1, 2, 3, 4], records
    assert {r["actor"] for r in records} == {gw.key_name}, records
    assert all(r["model"] == "scale" for r in records), records
    assert records[-1]["after"] == {"stable": 2}, records[-1]

    r = gw.cli_ok("audit", "verify", "--models", gw.models_dir, key=None)
    assert "4 records" in r.stdout, r.stdout

    # One changed byte (a digit of the third record's time) breaks the chain there.
    log = gw.models_dir / "audit.log"
    data = bytearray(log.read_bytes())
    lines = data.split(b"\n")
    assert len(lines) == 5 and lines[-1] == b"", data  # four records, each ending in a newline
    start = len(lines[0]) + len(lines[1]) + 2
    at = data.index(b'"time":"', start) + len(b'"time":"') + 3  # the last digit of the year
    data[at] = ord("1") if data[at] != ord("1") else ord("2")
    log.write_bytes(bytes(data))

    r = gw.cli("audit", "verify", "--models", gw.models_dir, key=None)
    assert r.returncode != 0, r
    assert "line 3" in r.stderr, r.stderr
    assert_no_key_anywhere(gw, gw.key)


def test_shadow_diffs_through_the_cli(gateway):
    gw = gateway(versions=[1, 3])
    gw.cli_ok("rollout", "set", "scale", "--stable", "1", "--shadow", "3:100:values")

    sent = []
    for i in range(20):
        x = [0.5 * i, 1.0 + i, 2.5, 0.25 * (i % 7)]
        sent.append(x)
        assert_answered_by(gw.infer(x), 1, "stable", x)  # the shadow never answers

    def compared_all():
        r = gw.cli("rollout", "diffs", "scale", "3")
        if r.returncode != 0:  # 404 until the first copy arrived
            return None
        doc = json.loads(r.stdout)
        return doc if doc["compared"] >= 20 else None

    diffs = gw.poll(compared_all, "20 shadow comparisons of scale v3")
    assert diffs["compared"] == 20, diffs
    assert diffs["agreed"] == 0 and diffs["agreement"] == 0, diffs
    assert diffs["model"] == "scale" and diffs["version"] == 3, diffs

    # The server keeps the 20 most different pairs (ranked by relative
    # difference, which is 2/3 for every pair here): all of ours.
    samples = diffs["samples"]
    assert samples, diffs
    biggest = max(max(x) for x in sent)
    expected = 3 * biggest - biggest
    assert max(s["outputs"][0]["max_abs"] for s in samples) == expected, samples
    for s in samples:
        assert s["primary_version"] == 1 and s["shadow_version"] == 3 and s["agree"] is False, s
        x = s["inputs"][0]["data"]
        assert x in sent, s
        assert s["primary_outputs"][0]["data"] == x, s
        assert s["shadow_outputs"][0]["data"] == scaled(x, 3), s
        assert s["outputs"][0]["max_abs"] == 3 * max(x) - max(x), s


def test_progressive_rollout_through_the_cli(gateway):
    gw = gateway(versions=[1, 2])
    gw.cli_ok("rollout", "set", "scale", "--stable", "1")

    stop = threading.Event()
    seen = {"1": 0, "2": 0}
    failures = []

    def traffic():
        while not stop.is_set():
            try:
                r = gw.infer(X)
                if r.status != 200 or r.body["outputs"][0]["data"] != scaled(X, int(r.version)):
                    failures.append((r.status, r.version, r.body))
                else:
                    seen[r.version] += 1
            except Exception as e:  # noqa: BLE001 - any transport error is a failure
                failures.append(repr(e))
            stop.wait(0.005)

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        started = gw.cli_json("rollout", "start", "scale", "--canary", "2", "--steps", "50,100",
                              "--interval", "1s", "--min-requests", "3", "--max-p99-ratio", "100")
        assert started["policy"]["canary"] == {"version": 2, "weight": 0.5}, started
        assert started["rollout"]["state"] == "running", started

        def finished():
            s = gw.cli_json("rollout", "status", "scale")
            state = (s.get("rollout") or {}).get("state")
            assert state in ("running", "promoted"), f"the rollout ended {state}: {json.dumps(s, indent=1)}"
            return s if state == "promoted" else None

        status = gw.poll(finished, "rollout of scale v2 promoted", timeout=30.0, interval=0.5)
    finally:
        stop.set()
        t.join(timeout=30)
    assert not failures, failures[:5]
    assert seen["1"] > 0 and seen["2"] > 0, seen

    assert status["stable"] == 2, status
    assert status["policy"].get("canary") is None and status["policy"]["stable"] == 2, status
    assert_answered_by(gw.infer(X), 2, "stable")

    records = gw.cli_json("audit", "show", "--model", "scale")
    actions = [(r["actor"], r["action"]) for r in records]
    assert actions == [(gw.key_name, "policy.set"), (gw.key_name, "rollout.start"),
                       ("controller", "rollout.advance"), ("controller", "rollout.promote")], actions
    advance, promote = records[2], records[3]
    assert advance["after"]["canary"] == {"version": 2, "weight": 1.0}, advance
    assert promote["after"] == {"stable": 2}, promote
    r = gw.cli_ok("audit", "verify", "--models", gw.models_dir, key=None)
    assert "4 records" in r.stdout, r.stdout

"""The ssh runner against a real OpenSSH server started on 127.0.0.1 with throw-away keys (.ci/run installs
openssh-server where it is missing); unreachable hosts give a one-line UserError naming the host, quickly."""
from __future__ import annotations

import dataclasses
import getpass
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from toolkit.errors import UserError
from toolkit.eval.runners import runner_for
from toolkit.eval.runners.ssh import SshRunner
from toolkit.targets import load_target

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "targets"
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def tiny_onnx(path: Path) -> Path:
    """x (batch, 32) -> MatMul -> Relu -> MatMul -> (batch, 4): a model any onnxruntime runs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((32, 64)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((64, 4)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1:<free port>, its host key in a known_hosts file, a client key it accepts."""
    if SSHD is None:
        pytest.skip("sshd is not installed (apt-get install openssh-server; .ci/run does it)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = _free_port()
    sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                             "/usr/libexec/sftp-server") if Path(p).exists()), "internal-sftp")
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nSubsystem sftp {sftp}\nLogLevel ERROR\n")
    host_key = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {proc.stderr.read().decode(errors='replace').strip()[:300]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    base = load_target(str(FIXTURES / "runner_loopback.toml"))
    target = dataclasses.replace(base, reach=dataclasses.replace(
        base.reach, user=getpass.getuser(), port=port, key=str(d / "client_key"), known_hosts=str(d / "known_hosts")))
    yield target, d
    proc.terminate()  # our own sshd, by its Popen handle
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_measures_a_model_over_loopback_ssh(sshd, tmp_path):
    target, _ = sshd
    runner = runner_for(target, python=sys.executable, timeout=120)
    assert isinstance(runner, SshRunner)
    model = tiny_onnx(tmp_path / "my model.onnx")  # a space in the name: each remote word is quoted
    t0 = time.monotonic()
    r = runner.measure(model, batch=2, seq_len=8, warmup=3, runs=25, threads=1)
    assert time.monotonic() - t0 < 60
    assert r["source"] == "measured" and r["runtime"] == "onnxruntime" and r["threads"] == 1
    assert r["runs"] == 25 and r["batch"] == 2 and r["input_shapes"] == {"x": [2, 32]}
    assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert r["throughput"] == pytest.approx(2 * 1000 / r["mean_ms"])
    assert r["where"] == f"ssh {target.reach.user}@127.0.0.1:{target.reach.port}" and r["target"] == "runner-loopback"
    assert r["model_size_bytes"] == model.stat().st_size  # the bytes that arrived are the model's
    # the remote folder was removed afterwards
    left = subprocess.run(runner.ssh_args(["sh", "-c", "ls -d /tmp/edge-bench.* 2>/dev/null | wc -l"]),
                          capture_output=True, text=True, timeout=30)
    assert left.stdout.strip() == "0"


def test_real_inputs_travel_with_the_model(sshd, tmp_path):
    target, _ = sshd
    model = tiny_onnx(tmp_path / "m.onnx")
    rows = np.random.default_rng(1).standard_normal((6, 32)).astype(np.float32)
    r = SshRunner(target, python=sys.executable).measure(model, batch=3, warmup=1, runs=5, threads=1,
                                                         inputs={"x": rows})  # two batches of 3, cycled
    assert r["inputs"] == "real" and r["input_shapes"] == {"x": [3, 32]} and r["batch"] == 3


def test_a_host_key_that_does_not_match_is_refused(sshd, tmp_path):
    target, d = sshd
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = tmp_path / "known_hosts"
    kind, key = (other.with_suffix(".pub")).read_text().split()[:2]
    wrong.write_text(f"[127.0.0.1]:{target.reach.port} {kind} {key}\n")
    t = dataclasses.replace(target, reach=dataclasses.replace(target.reach, known_hosts=str(wrong)))
    with pytest.raises(UserError, match=r"127\.0\.0\.1") as err:
        SshRunner(t, python=sys.executable).measure(tiny_onnx(tmp_path / "m.onnx"), runs=2, warmup=1)
    assert "Host key verification failed" in str(err.value)


def test_the_device_error_comes_back(sshd, tmp_path):
    target, _ = sshd
    with pytest.raises(UserError, match="running the benchmark failed") as err:
        SshRunner(target, python="/nonexistent/python3").measure(tiny_onnx(tmp_path / "m.onnx"), runs=2, warmup=1)
    assert "nonexistent" in str(err.value)


def test_a_closed_port_is_a_user_error_naming_the_host_at_once(tmp_path):
    target = load_target(str(FIXTURES / "runner_closed_port.toml"))
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"pi@127\.0\.0\.1:1.*(refused|cannot reach)") as err:
        runner_for(target).measure(tiny_onnx(tmp_path / "m.onnx"), runs=2, warmup=1)
    assert time.monotonic() - t0 < 10 and "\n" not in str(err.value) and err.value.exit_code == 2


def test_a_host_that_never_answers_times_out_naming_it(tmp_path):
    target = load_target(str(FIXTURES / "runner_blackhole.toml"))
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"pi@192\.0\.2\.10:22") as err:
        SshRunner(target, connect_timeout=1, timeout=3).measure(tiny_onnx(tmp_path / "m.onnx"), runs=2, warmup=1)
    assert time.monotonic() - t0 < 8 and err.value.exit_code == 2


def test_a_missing_key_file_is_named(tmp_path):
    base = load_target(str(FIXTURES / "runner_closed_port.toml"))
    t = dataclasses.replace(base, reach=dataclasses.replace(base.reach, key=str(tmp_path / "no_such_key")))
    with pytest.raises(UserError, match="reach.key file not found"):
        SshRunner(t).measure(tiny_onnx(tmp_path / "m.onnx"))

"""Device profiles (toolkit/targets/) and ``python -m toolkit targets``."""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from toolkit import targets as tg
from toolkit.errors import UserError
from toolkit.targets import host as host_module
from toolkit.reach import check_reach, ssh_command
from toolkit.targets import (
    Target,
    detect_host,
    host_peak,
    int8_format,
    list_targets,
    load_target,
    recommended_int8,
)

REPO = Path(__file__).resolve().parents[1]
PROFILES = sorted(tg.profiles_dir().glob("*.toml"))
BAD = Path(__file__).resolve().parent / "fixtures" / "targets"


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit", "targets", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# --- packaged profiles: parametrised over the files, so a new profile is covered by adding it --------------------


def test_the_profiles_the_design_names_are_packaged():
    names = {p.stem for p in PROFILES}
    assert names >= {"x86-avx2", "x86-avx512-vnni", "raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano",
                     "android-arm64"}
    assert "host" not in names  # detected at run time, never a file
    assert [t.name for t in list_targets()] == ["host"] + [p.stem for p in PROFILES]


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_profile_parses_and_carries_sources(path: Path):
    t = load_target(path.stem)
    assert isinstance(t, Target)
    assert t.name == path.stem and t.schema_version == 1 and t.file == str(path.resolve())
    assert t.description and t.arch in ("x86_64", "aarch64") and t.isa
    assert 1 <= t.threads <= t.cores and t.frequency_ghz > 0 and t.memory_mb > 0
    assert t.peak.gflops_fp32 > 0 and t.peak.gops_int8 > 0 and t.peak.bandwidth_gbs > 0
    assert len(t.peak.source) > 20, "a peak figure needs its source: a datasheet or the formula"
    for acc in t.accelerators:
        assert len(acc.source) > 20 and acc.execution_providers
    assert 0 < t.budget.max_model_mb <= t.budget.max_memory_mb <= t.memory_mb
    # DESIGN.md's rule, for every profile: U8S8 + reduce_range on AVX2 without VNNI, S8S8 QDQ on ARM.
    assert t.int8 == recommended_int8(t.arch, t.isa)
    # The same profile read through its path gives the same target.
    assert load_target(str(path)) == t


def test_arm_profiles_figures_follow_their_formulas():
    pi4, pi5 = load_target("raspberry-pi-4"), load_target("raspberry-pi-5")
    assert (pi4.cores, pi4.frequency_ghz, pi4.isa) == (4, 1.8, ["neon"])  # Cortex-A72: no dotprod
    assert pi4.peak.gflops_fp32 == pytest.approx(4 * 1.8 * 16)  # 2x128-bit FMA pipes = 16 FLOP/cycle/core
    assert pi4.peak.bandwidth_gbs == pytest.approx(3.2 * 4)  # LPDDR4-3200 on a 32-bit bus
    assert "dotprod" in pi5.isa and pi5.frequency_ghz == 2.4
    assert pi5.peak.gops_int8 == pytest.approx(4 * 2.4 * 64)  # SDOT: 16 MAC per op on 2 pipes
    jetson = load_target("jetson-orin-nano")
    assert jetson.cores == 6
    (gpu,) = jetson.accelerators
    assert {"CUDAExecutionProvider", "TensorrtExecutionProvider"} <= set(gpu.execution_providers)
    assert gpu.gflops_fp32 == pytest.approx(1024 * 2 * 0.625)
    assert "Snapdragon" in load_target("android-arm64").description


# --- INT8 format ---------------------------------------------------------------------------------------------


def test_int8_format_x86_avx2_is_u8s8_reduce_range():
    f = int8_format("x86-avx2")
    assert f == {"activation": "uint8", "weight": "int8", "format": "QOperator", "reduce_range": True,
                 "per_channel": True}
    assert int8_format(load_target("x86-avx512-vnni"))["reduce_range"] is False  # VNNI accumulates in int32


def test_int8_format_raspberry_pi_4_is_s8s8_qdq():
    f = int8_format("raspberry-pi-4")
    assert (f["activation"], f["weight"], f["format"], f["reduce_range"]) == ("int8", "int8", "QDQ", False)
    assert load_target("raspberry-pi-4").int8.label == "S8S8 QDQ"
    assert load_target("x86-avx2").int8.label == "U8S8 QOperator reduce_range"


# --- host ----------------------------------------------------------------------------------------------------


def test_host_detection_is_sane_here():
    host = load_target("host")
    assert host.name == "host" and host.reach.kind == "local" and host.file == ""
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert host.arch == "x86_64"
        flags = next((line.split(":", 1)[1].split() for line in cpu.splitlines() if line.startswith("flags")), [])
        assert ("avx2" in host.isa) == ("avx2" in flags)
        for f in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni"):
            assert (f in host.isa) == (f in flags), f
    assert 1 <= host.threads <= host.cores <= (os.cpu_count() or 1)
    assert 0 < host.memory_mb <= psutil.virtual_memory().total // 2**20
    assert host.int8 == recommended_int8(host.arch, host.isa)
    assert host.peak.source and host.peak.gflops_fp32 >= 0
    if host.frequency_ghz > 0:  # the formula is the source: cores x GHz x FLOP/cycle
        assert "formula" in host.peak.source and host.peak.gflops_fp32 > 0


def test_host_on_arm_reads_features(monkeypatch):
    info = {"features": "fp asimd evtstrm aes pmull asimdhp cpuid asimdrdm asimddp i8mm", "cpu mhz": "2400"}
    monkeypatch.setattr(host_module, "_cpuinfo", lambda: info)
    monkeypatch.setattr(host_module.platform, "machine", lambda: "aarch64")
    host = detect_host()
    assert host.arch == "aarch64" and host.isa == ["neon", "fp16", "dotprod", "i8mm"]
    assert int8_format(host)["format"] == "QDQ" and int8_format(host)["activation"] == "int8"


def test_host_peak_formula():
    p = host_peak("x86_64", ["avx", "avx2", "fma"], threads=4, ghz=3.0)
    assert (p.gflops_fp32, p.gops_int8, p.bandwidth_gbs) == (384.0, 768.0, 0.0)  # 4 x 3 x 32; INT8 2x
    assert "4 cores x 3.00 GHz x 32 FLOP/cycle" in p.source
    assert host_peak("x86_64", ["avx2", "fma", "avx512f", "avx512_vnni"], 4, 3.0).gops_int8 == 1536.0  # VNNI 4x
    assert host_peak("aarch64", ["neon"], 4, 1.8).gops_int8 == pytest.approx(115.2)  # no dotprod: 1x
    assert host_peak("aarch64", ["neon", "dotprod"], 4, 2.4).gops_int8 == pytest.approx(614.4)
    unknown = host_peak("x86_64", ["avx2"], 4, 0.0)
    assert unknown.gflops_fp32 == 0 and "unknown" in unknown.source


# --- bad profiles: one line naming the file and the key --------------------------------------------------------


@pytest.mark.parametrize("fixture, expected", [
    ("missing_field.toml", "missing key 'peak.source'"),
    ("mistyped_field.toml", 'cores = "four": expected an integer'),
    ("unknown_key.toml", "unknown key 'cors'; did you mean 'cores'?"),
    ("not_toml.toml", "not valid TOML"),
])
def test_bad_profile_files(fixture: str, expected: str):
    with pytest.raises(UserError) as e:
        load_target(str(BAD / fixture))
    message = str(e.value)
    assert fixture in message.split(":")[0] and expected in message and "\n" not in message


def _edited(tmp_path: Path, old: str, new: str) -> str:
    text = (tg.profiles_dir() / "raspberry-pi-4.toml").read_text()
    assert old in text
    path = tmp_path / "edited.toml"
    path.write_text(text.replace(old, new, 1))
    return str(path)


# An accelerator whose execution provider is misspelt (ONNX Runtime writes "Tensorrt").
MISSPELT_EP = """[[accelerators]]
name = "gpu"
kind = "gpu"
execution_providers = ["TensorRTExecutionProvider"]
gflops_fp32 = 1.0
gflops_fp16 = 1.0
gops_int8 = 1.0
bandwidth_gbs = 1.0
memory_mb = 1
source = "x"

"""


@pytest.mark.parametrize("old, new, expected", [
    ('runtime = "onnxruntime"', 'runtime = "tflite"', 'runtime = "tflite": expected one of onnxruntime'),
    ("threads = 4", "threads = 8", "threads = 8: must be between 1 and cores (4)"),
    ('isa = ["neon"]', 'isa = ["neon", "dotprd"]', "isa[1] = \"dotprd\": not a known aarch64 feature; did you mean 'dotprod'?"),
    ("schema_version = 1", "schema_version = 2", "schema_version = 2: this toolkit reads version 1"),
    ('format = "QDQ"', 'format = "qdq"', "int8.format = \"qdq\": expected one of QOperator, QDQ; did you mean 'QDQ'?"),
    ("reduce_range = false", 'reduce_range = "no"', 'int8.reduce_range = "no": expected true or false'),
    ('formats = ["onnx", "ort", "pte"]', 'formats = ["pte"]', "must include 'onnx', the format of runtime"),
    ('kind = "none"', 'kind = "ssh"\nhost = "pi.local"', "missing key 'reach.user'"),
    ('kind = "none"', 'kind = "none"\nhost = "pi.local"', 'reach.host is only used when reach.kind = "ssh"'),
    ('kind = "none"', 'kind = "ssh"\nhost = "-oProxyCommand=x"\nuser = "pi"', "reach.host = \"-oProxyCommand=x\": must be a plain"),
    ("name = \"raspberry-pi-4\"", 'name = "host"', "name = \"host\": must be a plain name other than 'host'"),
    ("[reach]", MISSPELT_EP + "[reach]",
     "accelerators[0].execution_providers[0] = \"TensorRTExecutionProvider\": expected one of CPUExecutionProvider"),
    ("[reach]", MISSPELT_EP + "[reach]",
     "did you mean 'TensorrtExecutionProvider'?"),
    ("[reach]", "[[reach]]", 'reach = [{"kind": "none"}]: expected a table [reach]'),
])
def test_bad_values_name_the_key(tmp_path: Path, old: str, new: str, expected: str):
    with pytest.raises(UserError) as e:
        load_target(_edited(tmp_path, old, new))
    message = str(e.value)
    assert message.startswith(str(tmp_path / "edited.toml") + ":") or message.startswith("edited.toml")
    assert expected in message and "\n" not in message


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(UserError) as e:
        load_target("rpi4")
    message = str(e.value)
    assert message.startswith("unknown target 'rpi4'; known: host, ")
    assert all(p.stem in message for p in PROFILES)
    assert message.endswith("did you mean 'raspberry-pi-4'?")
    with pytest.raises(UserError, match="no such target file"):
        load_target("nowhere/pi.toml")


# --- reach -----------------------------------------------------------------------------------------------------


def test_ssh_profile_and_command_are_an_argument_list():
    t = load_target(str(BAD / "ssh_example.toml"))
    assert (t.reach.kind, t.reach.host, t.reach.user, t.reach.port) == ("ssh", "192.0.2.10", "pi", 2222)
    args = ssh_command(t.reach)
    assert args[0] == "ssh" and args[-2:] == ["--", "pi@192.0.2.10"]
    for option in ("BatchMode=yes", "ConnectTimeout=5", "StrictHostKeyChecking=yes"):
        assert args[args.index(option) - 1] == "-o"
    assert args[args.index("-p") + 1] == "2222"
    assert args[args.index("-i") + 1] == str(Path("~/.ssh/id_ed25519").expanduser())


def test_check_reach_local_and_none():
    assert check_reach(load_target("host")).status == "reachable"
    assert check_reach(load_target("raspberry-pi-4")).status == "estimate only"


# --- the command line ----------------------------------------------------------------------------------------


def test_cli_targets_json():
    proc = _cli("--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["schema_version"] == 1
    names = [t["name"] for t in data["targets"]]
    assert names == ["host"] + [p.stem for p in PROFILES]
    pi4 = data["targets"][names.index("raspberry-pi-4")]
    assert pi4["int8_label"] == "S8S8 QDQ" and pi4["peak"]["source"] and pi4["reach"]["kind"] == "none"


def test_cli_targets_table():
    proc = _cli()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "INT8" in lines[0] and "reach" in lines[0]
    assert any(line.split()[:1] == ["x86-avx2"] and "U8S8 QOperator reduce_range" in line for line in lines)


def test_cli_check_closed_port_is_unreachable_quickly(tmp_path: Path):
    with socket.socket() as s:  # a port nothing listens on: bound, then released
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = (BAD / "ssh_example.toml").read_text()
    profile = tmp_path / "loopback.toml"
    profile.write_text(text.replace('"192.0.2.10"', '"127.0.0.1"').replace("port = 2222", f"port = {port}")
                       .replace('key = "~/.ssh/id_ed25519"\n', ""))
    start = time.monotonic()
    proc = _cli("--check", "--json", str(profile), "raspberry-pi-4", timeout=30)
    elapsed = time.monotonic() - start
    assert proc.returncode == 3, proc.stderr  # a check failed
    checks = {t["name"]: t["check"] for t in json.loads(proc.stdout)["targets"]}
    assert checks["ssh-example"]["status"] == "unreachable"
    assert "127.0.0.1" in checks["ssh-example"]["reason"] and str(port) in checks["ssh-example"]["reason"]
    assert checks["raspberry-pi-4"]["status"] == "estimate only"
    assert elapsed < 15


def test_cli_unknown_target_is_exit_2_one_line():
    proc = _cli("rpi4")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "did you mean 'raspberry-pi-4'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_host_summary_names_the_cpu_cores_and_the_isa_flags_it_has():
    from toolkit.targets.host import _cpuinfo, detect_host, host_summary

    line = host_summary()
    host = detect_host()
    assert f", {host.cores} cores, " in line
    flags = set(_cpuinfo().get("flags", "").split())
    for flag in ("avx2", "avx512_vnni"):  # the flags that decide which INT8 kernels run
        assert (flag in line) == (flag in flags), (flag, line)

"""Device profiles: the dataclasses, loading and validation (DESIGN.md "Targets").

A profile is ``targets/<name>.toml`` (packaged with the toolkit), any ``.toml`` file the user names, or ``host``,
which is not a file: it is detected at run time from /proc/cpuinfo, the CPU affinity mask and the memory size.
Every field has a one-line doc string (the ``doc`` metadata), which the error messages and the README read.
Errors name the file and the key, and suggest the nearest valid key or name.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import UserError, did_you_mean, nearest

SCHEMA_VERSION = 1
ARCHES = ("x86_64", "aarch64")
RUNTIMES = ("onnxruntime", "ort-mobile", "executorch")
FORMATS = ("onnx", "ort", "pte", "torchscript")
# The file format each runtime loads: a profile must accept the format of its preferred runtime.
RUNTIME_FORMAT = {"onnxruntime": "onnx", "ort-mobile": "ort", "executorch": "pte"}
REACH_KINDS = ("local", "ssh", "none")
ACCELERATOR_KINDS = ("gpu", "npu", "dsp")
# ISA features a profile may list: the /proc/cpuinfo names on x86; on ARM our names for the kernel's
# (asimd -> neon, asimdhp -> fp16, asimddp -> dotprod), as the ARM ARM calls them.
X86_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
)
ARM_FEATURES = ("neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2")
_ARM_CPUINFO = {"asimd": "neon", "neon": "neon", "asimdhp": "fp16", "asimddp": "dotprod", "i8mm": "i8mm",
                "bf16": "bf16", "sve": "sve", "sve2": "sve2"}
EXECUTION_PROVIDERS = (
    "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider",
    "OpenVINOExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider", "NnapiExecutionProvider",
    "QNNExecutionProvider", "XnnpackExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider",
    "ACLExecutionProvider", "ArmNNExecutionProvider", "WebGpuExecutionProvider",
)
# Names people type for the packaged targets, so `unknown target` can point at the right one.
ALIASES = {
    "local": "host", "this": "host", "rpi4": "raspberry-pi-4", "pi4": "raspberry-pi-4", "rpi-4": "raspberry-pi-4",
    "rpi5": "raspberry-pi-5", "pi5": "raspberry-pi-5", "rpi-5": "raspberry-pi-5", "jetson": "jetson-orin-nano",
    "orin": "jetson-orin-nano", "orin-nano": "jetson-orin-nano", "android": "android-arm64", "phone": "android-arm64",
    "avx2": "x86-avx2", "x86": "x86-avx2", "avx512": "x86-avx512-vnni", "vnni": "x86-avx512-vnni",
}


def _f(doc: str, default: Any = MISSING, **meta: Any) -> Any:
    """A dataclass field with its one-line doc string; no default means the key is required in a file."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **meta})
    return field(default=default, metadata={"doc": doc, **meta})


@dataclass(frozen=True)
class Int8:
    """[int8]: the INT8 format that suits the device (DESIGN.md), consumed by the compression stage."""

    activation: str = _f("activation type: uint8 (U8S8, x86 without VNNI saturation issues aside) | int8 (S8S8)",
                         choices=("uint8", "int8"))
    weight: str = _f("weight type: int8", choices=("int8",))
    format: str = _f("ONNX quantized graph form: QOperator (QLinear* ops) | QDQ (QuantizeLinear/DequantizeLinear pairs)",
                     choices=("QOperator", "QDQ"))
    reduce_range: bool = _f("7-bit weights: avoids the int16 overflow of VPMADDUBSW on AVX2 without VNNI")
    per_channel: bool = _f("one scale per output channel of a weight (else one per tensor)")

    @property
    def label(self) -> str:
        """'U8S8 QOperator reduce_range', 'S8S8 QDQ': the short form the table and report show."""
        kind = ("U8" if self.activation == "uint8" else "S8") + "S8"
        return " ".join([kind, self.format] + (["reduce_range"] if self.reduce_range else []))


@dataclass(frozen=True)
class Peak:
    """[peak]: theoretical peak figures over the `threads` cores the runtime uses, with where they come from."""

    gflops_fp32: float = _f("peak FP32 GFLOP/s (1 FMA = 2 FLOP); 0 = unknown (host only)")
    gops_int8: float = _f("peak INT8 GOP/s (1 MAC = 2 OP); 0 = unknown (host only)")
    bandwidth_gbs: float = _f("peak DRAM bandwidth, GB/s; 0 = unknown (host only)")
    source: str = _f("where the figures come from: a vendor datasheet, or the formula cores x GHz x ops/cycle")


@dataclass(frozen=True)
class Budget:
    """[budget]: limits for the fit check; a variant over either is flagged in the report."""

    max_model_mb: float = _f("largest model file that fits the device's storage/download budget, MB")
    max_memory_mb: float = _f("largest peak memory the model may use while running, MB")


@dataclass(frozen=True)
class Reach:
    """[reach]: how latency is measured there: on this machine, over ssh, or not at all (estimated)."""

    kind: str = _f("local (this machine) | ssh | none (estimate only)", choices=REACH_KINDS)
    host: str = _f("ssh: host name or address", "")
    user: str = _f("ssh: user name", "")
    port: int = _f("ssh: port", 22)
    key: str = _f("ssh: private key file (empty: ssh's defaults and agent)", "")
    known_hosts: str = _f("ssh: known_hosts file to check the host key against (empty: ~/.ssh/known_hosts)", "")

    @property
    def label(self) -> str:
        """'none', 'local', 'ssh pi@10.0.0.7:22'."""
        return f"ssh {self.user}@{self.host}:{self.port}" if self.kind == "ssh" else self.kind


@dataclass(frozen=True)
class Accelerator:
    """[[accelerators]]: a GPU/NPU beside the CPU, reached through ONNX Runtime execution providers."""

    name: str = _f("what it is, e.g. 'Ampere GPU, 1024 CUDA cores, 32 Tensor Cores'")
    kind: str = _f("gpu | npu | dsp", choices=ACCELERATOR_KINDS)
    execution_providers: list[str] = _f("ONNX Runtime execution providers, preferred first", choices=EXECUTION_PROVIDERS)
    gflops_fp32: float = _f("peak FP32 GFLOP/s")
    gflops_fp16: float = _f("peak FP16 GFLOP/s (tensor cores where there are any; dense)")
    gops_int8: float = _f("peak INT8 GOP/s (dense)")
    bandwidth_gbs: float = _f("memory bandwidth it sees, GB/s")
    memory_mb: int = _f("memory it can use, MB (shared with the CPU on systems-on-chip)")
    source: str = _f("where the figures come from")


@dataclass(frozen=True)
class Target:
    """A device profile (DESIGN.md "Targets")."""

    schema_version: int = _f("profile format version (1)")
    name: str = _f("the name recipes and --target use; a packaged profile's equals its file name")
    description: str = _f("the device, the reference chip/board the figures are for")
    arch: str = _f("x86_64 | aarch64", choices=ARCHES)
    isa: list[str] = _f("ISA features the kernels can use: avx2, avx512_vnni, neon, dotprod, ...")
    cores: int = _f("CPU cores (physical) the device has")
    threads: int = _f("threads the runtime should use (preferred), at most cores")
    frequency_ghz: float = _f("clock of the cores the threads run on, GHz (0 = unknown, host only)")
    memory_mb: int = _f("device memory, MB")
    runtime: str = _f("preferred runtime: onnxruntime | ort-mobile | executorch", choices=RUNTIMES)
    formats: list[str] = _f("file formats the device accepts: onnx | ort | pte | torchscript", choices=FORMATS)
    int8: Int8 = _f("the INT8 format that suits the device")
    peak: Peak = _f("peak compute and memory bandwidth, with their source")
    budget: Budget = _f("limits for the fit check")
    reach: Reach = _f("how to reach the device to measure latency")
    accelerators: list[Accelerator] = _f("GPUs/NPUs beside the CPU (optional)", [])
    # Where the profile was read from ("" for host); not a TOML key.
    file: str = _f("internal", "", internal=True)

    def to_dict(self) -> dict[str, Any]:
        """The profile as a JSON-ready dict (nested tables as dicts)."""
        return dataclasses.asdict(self)


# --- loading -------------------------------------------------------------------------------------------------


def profiles_dir() -> Path:
    """The folder of the packaged profiles (targets/ in the repository, toolkit.targets in a wheel)."""
    from toolkit import resources

    try:
        return resources.targets_dir()
    except TypeError:
        # importlib.resources refuses "toolkit.targets" when this module shadows the data package of that name
        # (Python 3.11 wants a package): fall back to the folder beside the source tree.
        return Path(__file__).resolve().parent.parent / "targets"


def packaged_profiles() -> dict[str, Path]:
    """Packaged profiles by name (file stem)."""
    return {p.stem: p for p in sorted(profiles_dir().glob("*.toml"))}


def known_names() -> list[str]:
    """'host' and the packaged profiles' names, in listing order."""
    return ["host", *packaged_profiles()]


def load_target(name: str) -> Target:
    """A target by name: 'host' (detected now), a packaged profile, or the path of a .toml profile.

    Raises:
        UserError: an unknown name (listing the known ones), a missing file, or a bad profile (naming the key).
    """
    if name == "host":
        from toolkit.targets.host import detect_host

        return detect_host()
    packaged = packaged_profiles()
    if name in packaged:
        return load_profile(packaged[name], display=f"targets/{packaged[name].name}")
    if name.endswith(".toml") or "/" in name or os.sep in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"{name}: no such target file (give a profile .toml, or one of: {', '.join(known_names())})")
        return load_profile(path)
    hit = nearest(name, {**{n: n for n in known_names()}, **ALIASES})
    hint = f"; did you mean '{hit}'?" if hit else ""
    raise UserError(f"unknown target '{name}'; known: {', '.join(known_names())}{hint}")


def list_targets() -> list[Target]:
    """host first, then every packaged profile by name."""
    from toolkit.targets.host import detect_host

    return [detect_host()] + [load_profile(p, display=f"targets/{p.name}") for p in packaged_profiles().values()]


def load_profile(path: str | Path, display: str | None = None) -> Target:
    """Read and validate one profile file; errors name ``display`` (default: the path as given)."""
    p = Path(path)
    shown = display or _display(p)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{shown}: cannot read the profile: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{shown}: not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{shown}: not valid TOML: {e}") from None
    target = _build(Target, data, "", shown)
    _validate(target, data, shown)
    return dataclasses.replace(target, file=str(p.resolve()))


def int8_format(target: Target | str) -> dict[str, Any]:
    """The INT8 format the compression stage should produce for ``target`` (a Target or a name).

    Returns:
        {"activation": "uint8"|"int8", "weight": "int8", "format": "QOperator"|"QDQ", "reduce_range": bool,
        "per_channel": bool}
    """
    t = load_target(target) if isinstance(target, str) else target
    return dataclasses.asdict(t.int8)


def recommended_int8(arch: str, isa: list[str]) -> Int8:
    """DESIGN.md's rule: U8S8 + reduce_range on AVX2 without VNNI, U8S8 with VNNI, S8S8 QDQ on ARM."""
    if arch == "x86_64":
        vnni = "avx512_vnni" in isa or "avx_vnni" in isa
        # Without VNNI, VPMADDUBSW adds pairs of u8*s8 products into int16, which can overflow: 7-bit weights
        # (reduce_range) keep the sum in range. VNNI's VPDPBUSD accumulates in int32 and needs no such care.
        return Int8(activation="uint8", weight="int8", format="QOperator", reduce_range=not vnni, per_channel=True)
    # ARM kernels (ORT's, XNNPACK's) and TensorRT run signed int8 on both sides, as QDQ.
    return Int8(activation="int8", weight="int8", format="QDQ", reduce_range=False, per_channel=True)


def _display(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


# --- validation ----------------------------------------------------------------------------------------------


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _shown(value: Any) -> str:
    """A value as the user wrote it in TOML: strings in double quotes, true/false."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if dataclasses.is_dataclass(item):
            return "an array of tables"
        return "a list of " + {str: "strings", int: "integers", float: "numbers", bool: "booleans"}[item]
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[tp]


def _scalar(value: Any, tp: Any, where: str, file: str) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        raise UserError(f"{file}: {where} = {_shown(value)}: expected {_type_name(tp)}")
    return float(value) if tp is float else value


def _choice(value: str, choices: tuple[str, ...], where: str, file: str) -> None:
    if value not in choices:
        raise UserError(f"{file}: {where} = {_shown(value)}: expected one of {', '.join(choices)}"
                        # nearest() lowers the word: match it against lowered choices (QDQ, CUDAExecutionProvider)
                        + (f"; did you mean '{hit}'?" if (hit := nearest(value, {c.lower(): c for c in choices})) else ""))


def _build(cls: type, table: dict[str, Any], prefix: str, file: str) -> Any:
    """Make ``cls`` from a TOML table: unknown, missing and mistyped keys are UserErrors naming the key."""
    hints = typing.get_type_hints(cls)
    known = _fields(cls)
    for key in table:
        if key not in known:
            raise UserError(f"{file}: unknown key '{prefix}{key}'{did_you_mean(key, {k: prefix + k for k in known})}")
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        where = prefix + name
        if name not in table:
            if f.default is MISSING and f.default_factory is MISSING:
                raise UserError(f"{file}: missing key '{where}' ({f.metadata['doc']})")
            continue
        value, tp = table[name], hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UserError(f"{file}: {where} = {_shown(value)}: expected a table [{where}]")
            kwargs[name] = _build(tp, value, where + ".", file)
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            if not isinstance(value, list):
                raise UserError(f"{file}: {where} = {_shown(value)}: expected {_type_name(tp)}")
            if dataclasses.is_dataclass(item):
                if not all(isinstance(v, dict) for v in value):
                    raise UserError(f"{file}: {where}: expected an array of tables [[{where}]]")
                kwargs[name] = [_build(item, v, f"{where}[{i}].", file) for i, v in enumerate(value)]
            else:
                kwargs[name] = [_scalar(v, item, f"{where}[{i}]", file) for i, v in enumerate(value)]
                for i, v in enumerate(kwargs[name]):
                    if "choices" in f.metadata:
                        _choice(v, f.metadata["choices"], f"{where}[{i}]", file)
        else:
            kwargs[name] = _scalar(value, tp, where, file)
            if "choices" in f.metadata:
                _choice(kwargs[name], f.metadata["choices"], where, file)
    return cls(**kwargs)


def _validate(t: Target, data: dict[str, Any], file: str) -> None:
    """Value and cross-field checks beyond types. Raises UserError naming the key."""

    def bad(key: str, value: Any, why: str) -> UserError:
        return UserError(f"{file}: {key} = {_shown(value)}: {why}")

    if t.schema_version != SCHEMA_VERSION:
        raise bad("schema_version", t.schema_version, f"this toolkit reads version {SCHEMA_VERSION}")
    if not t.name or t.name == "host" or any(c in t.name for c in "/\\ ") or t.name.startswith("."):
        raise bad("name", t.name, "must be a plain name other than 'host' (no spaces or slashes)")
    vocabulary = X86_FEATURES if t.arch == "x86_64" else ARM_FEATURES
    for i, feature in enumerate(t.isa):
        if feature not in vocabulary:
            raise UserError(f"{file}: isa[{i}] = {_shown(feature)}: not a known {t.arch} feature"
                            f"{did_you_mean(feature, list(vocabulary))}")
    checks = [
        ("cores", t.cores, t.cores >= 1, "must be at least 1"),
        ("threads", t.threads, 1 <= t.threads <= t.cores, f"must be between 1 and cores ({t.cores})"),
        ("frequency_ghz", t.frequency_ghz, t.frequency_ghz > 0, "must be above 0"),
        ("memory_mb", t.memory_mb, t.memory_mb > 0, "must be above 0"),
        ("formats", t.formats, bool(t.formats), "must name at least one format"),
        ("formats", t.formats, RUNTIME_FORMAT[t.runtime] in t.formats,
         f"must include '{RUNTIME_FORMAT[t.runtime]}', the format of runtime = \"{t.runtime}\""),
        ("peak.gflops_fp32", t.peak.gflops_fp32, t.peak.gflops_fp32 > 0, "must be above 0"),
        ("peak.gops_int8", t.peak.gops_int8, t.peak.gops_int8 > 0, "must be above 0"),
        ("peak.bandwidth_gbs", t.peak.bandwidth_gbs, t.peak.bandwidth_gbs > 0, "must be above 0"),
        ("peak.source", t.peak.source, bool(t.peak.source.strip()), "say where the figures come from"),
        ("budget.max_model_mb", t.budget.max_model_mb, t.budget.max_model_mb > 0, "must be above 0"),
        ("budget.max_memory_mb", t.budget.max_memory_mb, t.budget.max_memory_mb > 0, "must be above 0"),
    ]
    for key, value, ok, why in checks:
        if not ok:
            raise bad(key, value, why)
    for i, acc in enumerate(t.accelerators):
        for name in ("gflops_fp32", "gflops_fp16", "gops_int8", "bandwidth_gbs", "memory_mb"):
            if getattr(acc, name) <= 0:
                raise bad(f"accelerators[{i}].{name}", getattr(acc, name), "must be above 0")
        if not acc.source.strip():
            raise bad(f"accelerators[{i}].source", acc.source, "say where the figures come from")
        if not acc.execution_providers:
            raise bad(f"accelerators[{i}].execution_providers", [], "name at least one execution provider")
    r, given = t.reach, set(data.get("reach", {}))
    if r.kind == "ssh":
        for key in ("host", "user"):
            value = getattr(r, key)
            if not value:
                raise UserError(f"{file}: missing key 'reach.{key}' (needed when reach.kind = \"ssh\")")
            # A leading '-' would reach ssh as an option: refuse it rather than quote it.
            if value.startswith("-") or any(c.isspace() for c in value) or "@" in value:
                raise bad(f"reach.{key}", value, "must be a plain name or address (no spaces, '@' or leading '-')")
        if not 1 <= r.port <= 65535:
            raise bad("reach.port", r.port, "must be a port number, 1-65535")
    else:
        extra = sorted(given - {"kind"})
        if extra:
            raise UserError(f"{file}: reach.{extra[0]} is only used when reach.kind = \"ssh\" (kind is \"{r.kind}\")")

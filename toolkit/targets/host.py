"""The host as a device profile: detected at run time from /proc/cpuinfo, the CPU affinity mask and the memory
size (the ``host`` target is not a file)."""
from __future__ import annotations

import os
import platform
from pathlib import Path

from toolkit.targets.profile import (_ARM_CPUINFO, ARM_FEATURES, FORMATS, SCHEMA_VERSION, X86_FEATURES, Budget,
                                     Peak, Reach, Target, recommended_int8)

def _cpuinfo() -> dict[str, str]:
    """The first value of each key in /proc/cpuinfo ({} where there is none, e.g. macOS)."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip().lower(), value.strip())
    return out


def _host_isa(arch: str, info: dict[str, str]) -> list[str]:
    if arch == "x86_64":
        flags = set(info.get("flags", "").split())
        return [f for f in X86_FEATURES if f in flags]
    if arch == "aarch64":
        found = {_ARM_CPUINFO[f] for f in info.get("features", "").split() if f in _ARM_CPUINFO}
        # Advanced SIMD is part of ARMv8-A: where the kernel does not list features (macOS), it is still there.
        found.add("neon")
        return [f for f in ARM_FEATURES if f in found]
    return []


def _host_ghz(info: dict[str, str]) -> float:
    """The cores' maximum clock: cpufreq's, else /proc/cpuinfo's current 'cpu MHz', else psutil's; 0 = unknown."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        pass
    try:
        return float(info["cpu mhz"]) / 1000
    except (KeyError, ValueError):
        pass
    try:
        import psutil

        freq = psutil.cpu_freq()
        return (freq.max or freq.current) / 1000 if freq else 0.0
    except Exception:  # psutil raises assorted errors on systems without cpufreq
        return 0.0


def _host_memory_mb() -> int:
    """Physical memory, or the cgroup's limit where a container sets a lower one."""
    import psutil

    total = psutil.virtual_memory().total
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(Path(path).read_text().strip())
        except (OSError, ValueError):  # absent, or "max" (no limit)
            continue
        total = min(total, limit)
    return total // 2**20


def host_peak(arch: str, isa: list[str], threads: int, ghz: float) -> Peak:
    """Theoretical peak of ``threads`` cores from the ISA: cores x GHz x FLOP/cycle, stated as the source."""
    if arch == "x86_64":
        if "avx512f" in isa:
            # One 512-bit FMA per cycle (or two 256-bit): true of every AVX-512 part; Xeon Gold 6xxx/Platinum have
            # a second 512-bit FMA unit, which flags do not reveal, so this may be half their peak.
            fpc, why = 32, "AVX-512: 1x512-bit FMA"
        elif "avx2" in isa and "fma" in isa:
            fpc, why = 32, "AVX2: 2x256-bit FMA"
        elif "avx" in isa:
            fpc, why = 16, "AVX: 256-bit mul + add"
        else:
            fpc, why = 8, "SSE: 128-bit mul + add"
        vnni = "avx512_vnni" in isa or "avx_vnni" in isa
        ratio, why8 = (4, "VNNI: 4 MACs per 32-bit lane") if vnni else (2, "VPMADDUBSW: 2 MACs per 16-bit lane")
    else:
        fpc, why = 16, "NEON: 2x128-bit FMA pipes (Cortex-A7x; Cortex-X cores have 4)"
        ratio, why8 = (4, "SDOT: 4 MACs per 32-bit lane") if "dotprod" in isa else (1, "SMLAL: 8-bit widening MAC")
    if ghz <= 0:
        return Peak(0.0, 0.0, 0.0, "host: clock unknown, peak not estimated (0 = unknown); latency here is measured")
    gflops = threads * ghz * fpc
    return Peak(
        gflops_fp32=round(gflops, 1),
        gops_int8=round(gflops * ratio, 1),
        bandwidth_gbs=0.0,
        source=(f"formula: {threads} cores x {ghz:.2f} GHz x {fpc} FLOP/cycle ({why}); INT8 = {ratio}x that "
                f"({why8}); bandwidth not detected (0 = unknown): the host is measured, not estimated"),
    )


def detect_host() -> Target:
    """This machine as a target: arch, ISA flags, usable cores, memory, clock; reached locally."""
    import psutil

    machine = platform.machine()
    arch = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}.get(machine.lower(), machine)
    info = _cpuinfo()
    isa = _host_isa(arch, info)
    try:
        cores = len(os.sched_getaffinity(0))  # the CPUs this process may run on (containers, taskset)
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or cores
    # ONNX Runtime's and torch's default is one thread per physical core: hyperthreads share the vector units.
    threads = max(1, min(cores, physical))
    ghz = _host_ghz(info)
    memory_mb = _host_memory_mb()
    cpu = info.get("model name") or info.get("hardware") or platform.processor() or machine
    return Target(
        schema_version=SCHEMA_VERSION,
        name="host",
        description=f"this machine ({cpu}), detected at run time",
        arch=arch,
        isa=isa,
        cores=cores,
        threads=threads,
        frequency_ghz=round(ghz, 3),
        memory_mb=memory_mb,
        runtime="onnxruntime",
        formats=list(FORMATS),
        int8=recommended_int8(arch, isa),
        peak=host_peak(arch, isa, threads, ghz),
        # Half the memory for the model at run time, a quarter for its file: room for the OS and the toolkit.
        budget=Budget(max_model_mb=float(memory_mb // 4), max_memory_mb=float(memory_mb // 2)),
        reach=Reach(kind="local"),
    )


def host_summary() -> str:
    """One line for a benchmark table: the CPU, its usable cores and the ISA that decides which kernels run
    (e.g. "AMD EPYC, 2 cores, avx2/avx512f/avx512_vnni")."""
    host = detect_host()
    cpu = host.description.removeprefix("this machine (").removesuffix("), detected at run time")
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "neon", "dotprod", "i8mm") if f in host.isa]
    return f"{cpu}, {host.cores} cores, {'/'.join(shown) or 'baseline ISA'}"


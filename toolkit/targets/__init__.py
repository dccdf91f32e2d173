"""Device profiles (DESIGN.md "Targets"): ``profile`` holds the dataclasses, loading and validation of
``targets/<name>.toml`` and user profiles; ``host`` detects this machine as the ``host`` profile.

    from toolkit.targets import load_target
    target = load_target("raspberry-pi-4")      # or "host", or a path to a .toml profile
"""
from toolkit.targets.host import _cpuinfo, detect_host, host_peak
from toolkit.targets.profile import (ARCHES, FORMATS, RUNTIMES, SCHEMA_VERSION, Accelerator, Budget, Int8, Peak,
                                     Reach, Target, _f, int8_format, known_names, list_targets, load_profile,
                                     load_target, packaged_profiles, profiles_dir, recommended_int8)

__all__ = ["ARCHES", "FORMATS", "RUNTIMES", "SCHEMA_VERSION", "Accelerator", "Budget", "Int8", "Peak", "Reach",
           "Target", "_cpuinfo", "_f", "detect_host", "host_peak", "int8_format", "known_names", "list_targets",
           "load_profile", "load_target", "packaged_profiles", "profiles_dir", "recommended_int8"]

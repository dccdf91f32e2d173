"""The fit check: does a variant fit a target's budget (DESIGN.md "Targets": ``[budget]``)?

A variant whose model file is larger than ``budget.max_model_mb`` or whose peak memory while running exceeds
``budget.max_memory_mb`` is flagged; the report shows the flag beside the variant's latency on that target.
Sizes are MiB (2**20 bytes), as the harness reports peak RSS.
"""
from __future__ import annotations

from typing import Any

MIB = 2**20


def fit_check(size_bytes: int | None, peak_memory_mb: float | None, target: Any) -> dict[str, Any]:
    """Compare a variant's file size and peak memory with ``target.budget``.

    Args:
        size_bytes: the deployable file's size (None: unknown, not checked).
        peak_memory_mb: peak memory while running, MiB (None: unknown, e.g. an estimate, not checked).
        target: a Target (its ``budget.max_model_mb`` and ``budget.max_memory_mb``).

    Returns:
        {"target", "fits": True | False | None (nothing known to check), "size_mb", "max_model_mb",
        "size_ok", "peak_memory_mb", "max_memory_mb", "memory_ok", "reasons": [one line per exceeded limit]}
    """
    budget = target.budget
    size_mb = size_bytes / MIB if size_bytes is not None else None
    size_ok = None if size_mb is None else size_mb <= budget.max_model_mb
    memory_ok = None if peak_memory_mb is None else peak_memory_mb <= budget.max_memory_mb
    reasons = []
    if size_ok is False:
        reasons.append(f"model file {size_mb:.1f} MiB > budget.max_model_mb {budget.max_model_mb:g} of "
                       f"target '{target.name}'")
    if memory_ok is False:
        reasons.append(f"peak memory {peak_memory_mb:.1f} MiB > budget.max_memory_mb {budget.max_memory_mb:g} of "
                       f"target '{target.name}'")
    checked = [ok for ok in (size_ok, memory_ok) if ok is not None]
    return {
        "target": target.name, "fits": all(checked) if checked else None,
        "size_mb": round(size_mb, 3) if size_mb is not None else None, "max_model_mb": budget.max_model_mb,
        "size_ok": size_ok,
        "peak_memory_mb": round(peak_memory_mb, 1) if peak_memory_mb is not None else None,
        "max_memory_mb": budget.max_memory_mb, "memory_ok": memory_ok, "reasons": reasons,
    }


__all__ = ["fit_check"]

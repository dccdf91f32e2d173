"""Model inputs for the latency harness, built from the model's own input signature.

A runner describes its inputs as :class:`InputSpec` (name, dtype, shape with ``None``/str for dynamic axes).
From those, :func:`synthetic_batch` makes deterministic inputs (seeded), and :func:`real_batches` cuts real
samples — a dict name → array with one row per sample, as the eval stage tokenises them — into batches.

Dynamic axes are filled the way onnxruntime_perf_test and Olive do for transformer inputs: axis 0 is the
batch, every other dynamic axis is the sequence length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from toolkit.errors import UserError

DEFAULT_BATCH = 1
DEFAULT_SEQ_LEN = 64  # DESIGN.md's [eval] latency default

# Integer inputs whose content has a fixed meaning; any other integer input is treated as token ids.
_MASK_NAMES = ("attention_mask", "decoder_attention_mask")
_ZERO_NAMES = ("token_type_ids",)
_POSITION_NAMES = ("position_ids",)
# When a runtime cannot tell an input's dtype (TorchScript, a plain nn.Module), these names are token inputs.
TOKEN_INPUT_NAMES = (
    "input_ids", "attention_mask", "token_type_ids", "position_ids", "decoder_input_ids", "decoder_attention_mask",
)


@dataclass(frozen=True)
class InputSpec:
    """One model input as the runtime declares it.

    Attributes:
        name: the input's name in the model.
        dtype: numpy dtype name ("int64", "float32", "bool", ...).
        shape: one entry per axis: an int for a fixed size, a str (symbolic name) or None for a dynamic one.
            None for the whole shape when the runtime does not know it (TorchScript); token inputs then get
            (batch, seq_len).
        fill: how synthetic values are made: "ids" | "ones" | "zeros" | "positions" | "normal"; None = from
            the name and dtype (see :func:`synthetic_batch`).
        vocab: for token ids, the size of the table they index when the model says so (an ONNX Gather on an
            embedding initializer); synthetic ids stay below it.
        bounds: the largest size of each axis where the runtime caps dynamic axes (an ExecuTorch program
            exported with bounded dynamic shapes); None = no caps.
    """

    name: str
    dtype: str
    shape: tuple[int | str | None, ...] | None
    fill: str | None = None
    vocab: int | None = None
    bounds: tuple[int, ...] | None = None

    @property
    def is_int(self) -> bool:
        return np.issubdtype(np.dtype(self.dtype), np.integer)


@dataclass
class Batches:
    """Inputs ready for a runner: one or more feeds (name → array), all with the same shapes."""

    feeds: list[dict[str, np.ndarray]]
    batch: int
    seq_len: int | None
    kind: str  # "synthetic" | "real"

    @property
    def shapes(self) -> dict[str, list[int]]:
        return {name: list(a.shape) for name, a in self.feeds[0].items()}


def resolve_shape(spec: InputSpec, batch: int | None, seq_len: int | None, model: str) -> tuple[int, ...]:
    """The concrete shape of ``spec``: fixed axes as declared, dynamic axis 0 = batch, other dynamic = seq_len,
    except a KV cache's ``past_*`` length, which is 0 (``past_sequence_length + sequence_length`` is seq_len).

    Raises:
        UserError: an explicit ``batch``/``seq_len`` contradicts a fixed axis, or a shape cannot be known.
    """
    if spec.shape is None:
        if spec.name in TOKEN_INPUT_NAMES:
            return (batch or DEFAULT_BATCH, seq_len or DEFAULT_SEQ_LEN)
        raise UserError(f"{model}: the shape of input '{spec.name}' is unknown to the runtime; pass real inputs")
    out = []
    for axis, dim in enumerate(spec.shape):
        want = batch if axis == 0 else seq_len
        if isinstance(dim, int) and dim > 0:
            if want is not None and want != dim and _is_token_axis(spec, axis):
                flag = "--batch" if axis == 0 else "--seq-len"
                raise UserError(
                    f"{model}: input '{spec.name}' has a fixed size {dim} on axis {axis}, not {want}; "
                    f"pass {flag} {dim} or export the model with a dynamic axis"
                )
            out.append(dim)
        elif isinstance(dim, str) and axis > 0 and all(t.strip().startswith("past") for t in dim.split("+")):
            out.append(0)  # a KV cache's length: empty, so the timed call is the prompt's forward (prefill)
        else:
            size = want or (DEFAULT_BATCH if axis == 0 else DEFAULT_SEQ_LEN)
            cap = spec.bounds[axis] if spec.bounds else None
            if cap and size > cap:
                if want is not None:
                    flag = "--batch" if axis == 0 else "--seq-len"
                    raise UserError(f"{model}: input '{spec.name}' takes at most {cap} on axis {axis}, not {want}; "
                                    f"pass {flag} {cap} or less")
                size = cap  # the default does not fit the program: its largest size does
            out.append(size)
    return tuple(out)


def _is_token_axis(spec: InputSpec, axis: int) -> bool:
    # --seq-len only speaks about axis 1 of token inputs; --batch about axis 0 of every input.
    return axis == 0 or (axis == 1 and spec.is_int)


def synthetic_batch(
    specs: Sequence[InputSpec],
    *,
    batch: int | None,
    seq_len: int | None,
    seed: int = 0,
    vocab_size: int | None = None,
    model: str = "model",
) -> Batches:
    """Deterministic inputs for ``specs`` (same seed → same arrays).

    Token ids are uniform in [0, vocab_size), else in [1, min(100, the input's embedding table)), else in
    [1, 100) (valid ids in any real vocabulary); attention masks are all ones, token_type_ids zeros, position_ids 0..S-1; floating
    inputs are standard normal; booleans are True.
    """
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = resolve_shape(spec, batch, seq_len, model)
        dtype = np.dtype(spec.dtype)
        fill = spec.fill or _fill_for(spec)
        if fill == "ones":
            arr = np.ones(shape, dtype=dtype)
        elif fill == "zeros":
            arr = np.zeros(shape, dtype=dtype)
        elif fill == "positions":
            arr = np.broadcast_to(np.arange(shape[-1] if shape else 1, dtype=dtype), shape).copy()
        elif fill == "ids":
            lo, hi = (0, vocab_size) if vocab_size else (1, min(100, spec.vocab or 100))
            lo = min(lo, hi - 1)
            arr = rng.integers(lo, hi, size=shape, dtype=dtype)
        else:
            arr = rng.standard_normal(size=shape).astype(dtype)
        feed[spec.name] = arr
    b, s = _batch_and_seq(specs, feed)
    return Batches(feeds=[feed], batch=b, seq_len=s, kind="synthetic")


def _fill_for(spec: InputSpec) -> str:
    if np.dtype(spec.dtype) == np.bool_:
        return "ones"
    if not spec.is_int:
        return "normal"
    if spec.name in _MASK_NAMES or spec.name.endswith("mask"):
        return "ones"
    if spec.name in _ZERO_NAMES:
        return "zeros"
    if spec.name in _POSITION_NAMES:
        return "positions"
    return "ids"


def real_batches(
    specs: Sequence[InputSpec],
    samples: Mapping[str, np.ndarray],
    *,
    batch: int | None,
    seq_len: int | None,
    model: str = "model",
) -> Batches:
    """Cut real samples (name → array, one row per sample) into consecutive batches of ``batch`` rows.

    A trailing partial batch is dropped so every timed call sees the same shapes.

    Raises:
        UserError: names differ from the model's inputs, dtypes do not fit, there are fewer samples than one
            batch, or the samples' sequence length differs from an explicit ``seq_len``.
    """
    want = [s.name for s in specs]
    missing = [n for n in want if n not in samples]
    extra = [n for n in samples if n not in want]
    if missing or extra:
        raise UserError(
            f"{model}: real inputs must match the model's inputs {want}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
        )
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        arr = np.asarray(samples[spec.name])
        dtype = np.dtype(spec.dtype)
        if arr.dtype != dtype:
            same_kind = (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_) == (spec.is_int or dtype == np.bool_)
            if not same_kind:
                raise UserError(f"{model}: real input '{spec.name}' is {arr.dtype}; the model takes {spec.dtype}")
            arr = arr.astype(dtype)
        if arr.ndim == 0:
            raise UserError(f"{model}: real input '{spec.name}' needs one row per sample, got a scalar")
        arrays[spec.name] = arr
    n = min(a.shape[0] for a in arrays.values())
    if len({a.shape[0] for a in arrays.values()}) != 1:
        raise UserError(f"{model}: real inputs have different numbers of rows: "
                        + ", ".join(f"{k}={a.shape[0]}" for k, a in arrays.items()))
    b = batch or DEFAULT_BATCH
    if n < b:
        raise UserError(f"{model}: {n} real samples are fewer than one batch of {b}")
    feeds = [
        {name: np.ascontiguousarray(a[i:i + b]) for name, a in arrays.items()}
        for i in range(0, n - b + 1, b)
    ]
    got_b, got_s = _batch_and_seq(specs, feeds[0])
    if seq_len is not None and got_s is not None and got_s != seq_len:
        raise UserError(f"{model}: real inputs have sequence length {got_s}, not {seq_len}; "
                        f"tokenise them to {seq_len} or leave the sequence length unset")
    return Batches(feeds=feeds, batch=got_b, seq_len=got_s, kind="real")


def _batch_and_seq(specs: Sequence[InputSpec], feed: Mapping[str, np.ndarray]) -> tuple[int, int | None]:
    """Batch = axis 0 of the first input; sequence length = axis 1 of the first integer input of rank ≥ 2."""
    first = feed[specs[0].name]
    b = int(first.shape[0]) if first.ndim else 1
    for spec in specs:
        a = feed[spec.name]
        if spec.is_int and a.ndim >= 2:
            return b, int(a.shape[1])
    return b, None

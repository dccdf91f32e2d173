"""A causal language model as an ExecuTorch program with its KV cache inside (what ``scheme = "8da4w"`` writes).

The program is ``forward(input_ids (1, T), cache_position (T,)) -> logits (1, T, vocab)``, exported by transformers'
``TorchExportableModuleForDecoderOnlyLM``: the key/value cache is a static buffer of ``max_cache_len`` positions held
by the program itself (mutable buffers), written at ``cache_position`` and read up to it. So a prefill is one call
with the prompt and positions ``0..T-1``, a decode step one call with the last token and its position, and starting
again at position 0 begins a new sequence: the attention mask is built from ``cache_position``, so what an earlier
sequence left in later slots is never read.

The program also carries constant methods in the convention of ExecuTorch's LLM runner (``use_kv_cache``,
``get_max_seq_len``, ``get_max_context_len``, ``get_vocab_size``, ``enable_dynamic_shape``), which is how the toolkit
tells a KV-cache program from a logits-only one (:func:`is_kv_program`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import UserError

KV_METHOD = "use_kv_cache"
"""the constant method that marks a program as a decoder with its cache inside"""


def _program(path: Path) -> Any:
    try:
        from executorch.runtime import Runtime
    except ImportError:
        raise UserError(f"{path}: running .pte programs needs ExecuTorch, which is not installed: "
                        f"pip install 'edge-toolkit[executorch]'") from None

    try:
        return Runtime.get().load_program(Path(path))
    except Exception as e:
        raise UserError(f"{path}: ExecuTorch cannot load it ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                        ) from None


def is_kv_program(path: Path | str) -> bool:
    """Whether a .pte is a causal LM with its KV cache inside (it has the ``use_kv_cache`` constant method)."""
    try:
        return KV_METHOD in set(_program(Path(path)).method_names)
    except UserError:
        return False


class PteDecoder:
    """Run a KV-cache program: prefill, decode steps, and full-window logits for perplexity and the guard.

    Args:
        path: the .pte. threads: the XNNPACK thread pool's size (None: leave it as it is).
    """

    def __init__(self, path: Path | str, threads: int | None = None):
        self.path = Path(path)
        program = _program(self.path)
        names = set(program.method_names)
        if KV_METHOD not in names:
            raise UserError(f"{self.path}: not a language model with its KV cache inside (no '{KV_METHOD}' method); "
                            f"make one with [[compress]] method = \"quantize\", scheme = \"8da4w\"")
        if threads is not None:
            import executorch.extension.pybindings.portable_lib as pool

            if hasattr(pool, "_unsafe_reset_threadpool"):
                pool._unsafe_reset_threadpool(int(threads))
        self._program = program  # the method borrows from the program: keep it alive
        self.method = program.load_method("forward")
        self.max_seq_len = int(self._constant("get_max_seq_len"))
        """the most tokens one call takes (the program's dynamic bound)"""
        self.max_context_len = int(self._constant("get_max_context_len"))
        """the cache's positions: a sequence may grow to this many tokens"""

    def _constant(self, name: str) -> Any:
        out = self._program.load_method(name).execute([])
        value = out[0]
        return value.item() if hasattr(value, "item") else value

    def __call__(self, ids: np.ndarray, start: int) -> np.ndarray:
        """Logits (T, vocab) of ``ids`` (T,) placed at positions ``start..start+T-1`` of the current sequence."""
        import torch

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size > self.max_seq_len or start + ids.size > self.max_context_len:
            raise UserError(f"{self.path}: {ids.size} tokens at position {start} do not fit the program's "
                            f"{self.max_context_len}-position cache ({self.max_seq_len} tokens per call)")
        tokens = torch.from_numpy(np.ascontiguousarray(ids)).reshape(1, -1)
        positions = torch.arange(start, start + ids.size, dtype=torch.long)
        return self.method.execute([tokens, positions])[0][0].float().numpy()

    def logits(self, batch: dict[str, Any]) -> np.ndarray:
        """(B, T, vocab) logits of a collated batch, row by row (the program takes batch 1): each row's real tokens
        (attention mask 1) from position 0; padded positions get zeros, which the labels there (-100) ignore."""
        ids = np.asarray(batch["input_ids"])
        mask = np.asarray(batch.get("attention_mask", np.ones_like(ids)))
        out = None
        for r in range(ids.shape[0]):
            keep = np.flatnonzero(mask[r])
            if keep.size == 0:
                continue
            row = self(ids[r, keep][: self.max_seq_len], 0)
            if out is None:
                out = np.zeros((ids.shape[0], ids.shape[1], row.shape[-1]), dtype=np.float32)
            out[r, keep[: row.shape[0]]] = row
        if out is None:
            raise UserError(f"{self.path}: the batch has no real tokens")
        return out

    def window(self, input_ids: Any) -> Any:
        """``model(input_ids)`` for :func:`toolkit.eval.perplexity.perplexity`: a (1, T) tensor in, logits out."""
        import torch

        ids = np.asarray(input_ids).reshape(-1)
        return (torch.from_numpy(self(ids, 0)).unsqueeze(0),)

"""INT8 quantization (``method = "quantize"``): the step's settings. Each ``scheme`` is its own module, registered
for this config: ``int8.py`` (ONNX Runtime dynamic / static), ``pt2e.py`` (torchao PT2E lowered to ExecuTorch),
``qat.py`` (quantization-aware training exported as ONNX QDQ).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from toolkit.errors import UserError, did_you_mean
from toolkit.schema import setting
from toolkit.steps import StepConfig, method, schemes

CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")


@method("quantize")
@dataclass
class QuantizeConfig(StepConfig):
    """[[compress]] method = "quantize": INT8 (ONNX Runtime, torchao PT2E, QAT)."""

    scheme: str = setting("int8-dynamic", "int8-dynamic (ONNX Runtime; transformers, encoder-decoders included) | "
                     "int8-static (ONNX Runtime with calibration; CNNs, single-graph models) | qat (fake-quantized "
                     "fine-tune, exported as ONNX QDQ) | pt2e (torchao PT2E + XNNPACK quantizer, lowered to "
                     "ExecuTorch .pte) | int4 (weight-only 4-bit MatMulNBits, ONNX Runtime; language models) | 8da4w "
                     "(int8 dynamic activations + int4 weights by torchao, lowered to ExecuTorch .pte with the KV "
                     "cache inside; decoder-only language models)")
    target: str = setting("host", "device profile whose INT8 format is produced (U8S8 + reduce_range on AVX2 without VNNI, "
                     "S8S8 QDQ on ARM)")
    calibration_samples: int = setting(128, "int8-static / pt2e: real training samples used to calibrate activation ranges")
    calibration_method: str = setting("MinMax", "int8-static: MinMax | Entropy | Percentile")
    per_channel: bool | str = setting("target", "one weight scale per output channel: true | false | \"target\" (the profile's)")
    reduce_range: bool | str = setting("target", "7-bit weights (AVX2 without VNNI): true | false | \"target\" (the profile's)")
    op_types: list[str] = setting([], "op types to quantize, e.g. [\"MatMul\", \"Attention\"] (empty: all that ONNX Runtime can)")
    nodes_to_exclude: list[str] = setting([], "ONNX node names to keep in float")
    max_accuracy_drop: float = setting(0.01, "accuracy guard: largest drop of the validation metric vs the parent (fraction: "
                                  "0.01 = 1 point; language models: relative perplexity rise); sensitive layers stay "
                                  "in float to meet it")
    optimize: bool = setting(True, "run ONNX Runtime's transformer optimizer (attention/GELU/LayerNorm fusions) first")
    block_size: int = setting(32, "int4 / 8da4w: weights per block sharing one scale (a power of two, at least 16)")
    symmetric: bool = setting(True, "int4 (rtn): symmetric blocks (no zero points); false stores a zero point per block")
    algorithm: str = setting("rtn", "int4: rtn (round to nearest) | hqq (half-quadratic, no data; float zero points "
                             "run ONNX Runtime's slow CPU kernel) | gptq (calibrated on calibration_samples training "
                             "texts)")
    accuracy_level: int | str = setting("auto", "int4: MatMulNBits kernel: 0 | 1 (float) | 4 (int8 activations) | "
                                        "\"auto\" (the fastest decode on this machine, measured and recorded)")
    quantize_embedding: bool = setting(True, "int4: the embedding lookup in 4 bits too (GatherBlockQuantized)")
    qat_steps: int = setting(200, "qat: fine-tuning steps with fake quantization")
    qat_lr: float = setting(1e-5, "qat: learning rate of the fine-tune")

    def check(self, where: str) -> None:
        known = schemes(QuantizeConfig)
        if self.scheme not in known:
            raise UserError(f"{where}: scheme = '{self.scheme}' is not a scheme{did_you_mean(self.scheme, known)}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise UserError(f"{where}: calibration_method = '{self.calibration_method}' is not one of "
                            f"{', '.join(CALIBRATION_METHODS)}{did_you_mean(self.calibration_method, list(CALIBRATION_METHODS))}")
        if self.calibration_samples < 1:
            raise UserError(f"{where}: calibration_samples = {self.calibration_samples}: an empty calibration set "
                            f"cannot set activation ranges; use at least 1 (e.g. 128)")
        for key in ("per_channel", "reduce_range"):
            value = getattr(self, key)
            if isinstance(value, str) and value != "target":
                raise UserError(f"{where}: {key} = \"{value}\": expected true, false or \"target\"")
        if not 0 <= self.max_accuracy_drop <= 1:
            raise UserError(f"{where}: max_accuracy_drop = {self.max_accuracy_drop}: must be a fraction in [0, 1] "
                            f"(0.01 = one accuracy point)")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise UserError(f"{where}: block_size = {self.block_size}: must be a power of two of at least 16 "
                            f"(16, 32, 64, 128)")
        if self.scheme == "8da4w" and self.block_size % 32:
            raise UserError(f"{where}: block_size = {self.block_size}: scheme = '8da4w' lowers to XNNPACK, whose "
                            f"4-bit kernels take groups of a multiple of 32 (32, 64, 128)")
        if self.algorithm not in INT4_ALGORITHMS:
            raise UserError(f"{where}: algorithm = '{self.algorithm}' is not one of {', '.join(INT4_ALGORITHMS)}"
                            f"{did_you_mean(self.algorithm, list(INT4_ALGORITHMS))}")
        if self.accuracy_level != "auto" and self.accuracy_level not in (0, 1, 2, 3, 4):
            raise UserError(f"{where}: accuracy_level = {self.accuracy_level!r}: expected 0, 1, 2, 3, 4 or \"auto\"")
        if self.qat_steps < 1:
            raise UserError(f"{where}: qat_steps = {self.qat_steps}: must be at least 1")
        if not self.qat_lr > 0:
            raise UserError(f"{where}: qat_lr = {self.qat_lr}: must be a positive number, e.g. 1e-5")
        from toolkit.targets import load_target

        try:
            load_target(self.target)
        except UserError as e:
            raise UserError(f"{where}: target: {e}") from None

    def check_model(self, model: Any, task: Any, where: str, from_base: bool) -> None:
        if self.scheme == "int4" and not task.kv_cache:
            raise UserError(f"{where}: scheme = 'int4' is weight-only 4-bit for language models (decoders and "
                            f"seq2seq), whose token-by-token decoding is memory-bound; for {task.name} use scheme = "
                            f"'int8-dynamic' or 'int8-static'")
        if self.scheme == "8da4w" and not (task.kv_cache and task.causal):
            raise UserError(f"{where}: scheme = '8da4w' exports decoder-only language models with their KV cache "
                            f"to ExecuTorch; for {task.name} use scheme = " + ("'int4' or 'int8-dynamic'"
                                                                              if task.kv_cache else "'pt2e'"))
        if self.scheme == "8da4w" and model is None:
            raise UserError(f"{where}: scheme = '8da4w' quantizes a PyTorch model, and model.source is an ONNX "
                            f"file; use scheme = 'int4'")
        if self.scheme in ("pt2e", "qat") and not task.classifies:
            raise UserError(f"{where}: scheme = '{self.scheme}' supports classifiers (text and image); for "
                            f"{task.name} use scheme = 'int8-dynamic'")
        if self.scheme in ("pt2e", "qat") and model is None:
            raise UserError(f"{where}: scheme = '{self.scheme}' quantizes a PyTorch model, and model.source is an "
                            f"ONNX file; use scheme = 'int8-dynamic' or 'int8-static'")


INT4_ALGORITHMS = ("rtn", "hqq", "gptq")


def int8_settings(step: QuantizeConfig) -> dict[str, Any]:
    """The INT8 format for the step: the target profile's, with the step's per_channel/reduce_range overrides."""
    from toolkit.targets import load_target

    target = load_target(step.target)
    fmt = target.int8
    per_channel = fmt.per_channel if step.per_channel == "target" else bool(step.per_channel)
    reduce_range = fmt.reduce_range if step.reduce_range == "target" else bool(step.reduce_range)
    kind = ("U8" if fmt.activation == "uint8" else "S8") + "S8"
    return {"target": target.name, "activation": fmt.activation, "weight": fmt.weight, "format": fmt.format,
            "per_channel": per_channel, "reduce_range": reduce_range,
            "label": " ".join([kind, fmt.format] + (["reduce_range"] if reduce_range else []))}


def over_budget_note(step: QuantizeConfig, metric: str, result: Any) -> str:
    best = result.best_partial
    tried = (f"; keeping {len(best['kept_in_float'])} layer groups in float reached {best['metric']:.4f} at best"
             if best and best.get("kept_in_float") else "")
    return (f"INT8 ({step.scheme}) lost more than the budget of {step.max_accuracy_drop:g}: validation {metric} "
            f"{result.metric:.4f} vs {result.baseline:.4f} for the parent{tried}. The INT8 variant is kept and "
            f"flagged; raise max_accuracy_drop, try scheme = 'qat', or keep the parent.")

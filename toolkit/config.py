"""Recipes: typed dataclasses loaded from TOML, with ``--set key=value`` overrides.

Every field has a default and a one-line doc string (the ``doc`` metadata), which the README's recipe
reference and the TUI's form read. Errors name the file, the key and the nearest valid key.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import UserError, did_you_mean
from toolkit.schema import build, fields_of, setting, to_dict

SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "linear", "constant")
CLEAN_STEPS = ("html", "control", "whitespace", "lower", "punct", "dedup", "pii")
AUGMENTATIONS = ("shift", "rotate", "noise")


@dataclass
class DataConfig:
    """[data]: where the examples come from and how they are cleaned and split."""

    train: str | list[str] = setting("", "training data: csv | tsv | jsonl | txt | an image folder | 'builtin:digits' | two line-aligned files [src, tgt]")
    validation: str | list[str] = setting("", "validation data (early stopping, compression guards); empty: carved from train")
    eval: str | list[str] = setting("", "held-out data for reported metrics; empty: carved from train")
    split: list[float] = setting([0.7, 0.2, 0.1], "train/validation/eval fractions when only train is given (stratified, seeded)")
    header: bool | str = setting("auto", "csv/tsv first row is a header: true | false | 'auto' (detected from the column names)")
    text_column: str = setting("text", "column holding the text (classification, language modelling); a position '0', '1'… without a header")
    label_column: str = setting("label", "column holding the class label")
    source_column: str = setting("source", "seq2seq: column holding the source text")
    target_column: str = setting("target", "seq2seq: column holding the target text")
    group_column: str = setting("", "optional column naming a subgroup, for per-group metrics")
    limit: int = setting(0, "use at most this many rows of each split (0 = all)")
    clean: list[str] = setting([], "text cleaning steps, in order: html | control | whitespace | lower | punct | dedup | pii")
    augment: list[str] = setting([], "image augmentation during training: shift | rotate | noise")
    flag_constant_images: bool = setting(True, "warn about (and drop) all-black / all-white images")
    max_length: int = setting(128, "maximum tokens per example (and the block size for language modelling)")


@dataclass
class ModelConfig:
    """[model]: what is trained or compressed."""

    source: str = setting("", "a local Hugging Face model directory, an .onnx file (compression only), or builtin:<name> (bert-tiny | gpt2-tiny | llama-small | bart-tiny | cnn-small); empty: the task's built-in")
    hidden_size: int = setting(0, "built-in models: width (0 = the built-in's default)")
    layers: int = setting(0, "built-in models: number of layers (0 = default)")
    heads: int = setting(0, "built-in models: attention heads (0 = default)")
    kv_heads: int = setting(0, "built-in llama-small: key/value heads for grouped-query attention (0 = heads / 2)")
    vocab_size: int = setting(4000, "built-in text models: size of the tokenizer trained on the training split")


@dataclass
class LoraConfig:
    """[train.lora]: parameter-efficient fine-tuning with LoRA adapters (peft); r = 0 trains every weight."""

    r: int = setting(0, "adapter rank; 0 = off (full fine-tuning); e.g. 8: only the adapters and the task head train")
    alpha: float = setting(16.0, "adapter scaling: the update B·A is multiplied by alpha / r")
    dropout: float = setting(0.05, "dropout on the adapters' input during training")
    target_modules: list[str] = setting([], "modules that get adapters (name suffixes); empty: the architecture's default (BERT query/value, GPT-2 c_attn, BART q_proj/v_proj)")
    modules_to_save: list[str] = setting([], "modules trained in full beside the adapters; empty: the classification head (classifier / score), none for language models")


@dataclass
class TrainConfig:
    """[train]: the training loop."""

    enabled: bool = setting(True, "false: use the model as given (to compress an existing model)")
    epochs: float = setting(3, "passes over the training split (ignored when max_steps > 0)")
    max_steps: int = setting(0, "optimizer steps to run (0 = from epochs)")
    batch_size: int = setting(32, "global batch size, whatever the number of processes or accumulation steps")
    lr: float = setting(5e-4, "peak learning rate (AdamW)")
    schedule: str = setting("cosine", "learning-rate schedule after warm-up: cosine | linear | constant")
    warmup: float = setting(0.06, "warm-up: a fraction of the steps (< 1) or a number of steps (>= 1)")
    weight_decay: float = setting(0.01, "AdamW weight decay (not applied to biases and norms)")
    dropout: float = setting(0.1, "dropout probability set on the model (built-in and Hugging Face configs)")
    precision: str = setting("fp32", "fp32 | bf16 | fp16 (torch.autocast; fp16 with a gradient scaler)")
    grad_accum: int = setting(1, "micro-batches per optimizer step (batch_size is split between them)")
    clip: float = setting(1.0, "clip the global gradient norm to this (0 = off)")
    checkpoint_every: int = setting(200, "save a checkpoint every this many optimizer steps (0 = only at the end)")
    keep_checkpoints: int = setting(2, "keep the newest this many checkpoints")
    log_every: int = setting(10, "log loss, LR, gradient norm, update ratio and throughput every this many steps")
    eval_every: int = setting(0, "validate every this many steps (0 = at the end of each epoch)")
    early_stopping: int = setting(0, "stop after this many validations without improvement (0 = off)")
    max_bad_steps: int = setting(5, "stop after this many non-finite losses/gradients in a row")
    deterministic: bool = setting(False, "deterministic kernels and data order: resuming gives bit-identical weights")
    detect_anomaly: bool = setting(False, "torch.autograd.detect_anomaly (slow; finds the op that made a NaN)")
    device: str = setting("auto", "auto | cpu | cuda")
    threads: int = setting(0, "torch threads for training on CPU (0 = torch's default)")
    compile: bool = setting(False, "torch.compile the model (Module.compile; checkpoints keep the eager keys); the first steps pay for the compilation", hash="if_set")
    profile: bool = setting(False, "time the host side of each step (collate, copy, forward, backward, optimizer, bookkeeping, events) into train/profile.json, with a torch.profiler trace of a few steps in train/profile/trace.json", hash="never")
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"doc": "LoRA adapters ([train.lora])"})


@dataclass
class ExportConfig:
    """[export]: the deployable files made for every variant."""

    formats: list[str] = setting(["onnx", "ort"], "onnx | ort (ONNX Runtime Mobile) | pte (ExecuTorch, extra 'executorch') | torchscript")
    opset: int = setting(18, "ONNX opset")
    atol: float = setting(1e-4, "float exports must match PyTorch within this absolute difference")
    min_agreement: float = setting(0.95, "lossy (INT8/FP16) exports: minimum agreement of predicted labels/tokens with the parent")
    min_cosine: float = setting(0.98, "lossy exports: minimum mean cosine similarity of logits with the parent")
    verify_samples: int = setting(32, "eval samples used to verify each export")


@dataclass
class LatencyConfig:
    """[eval.latency]: how latency is measured."""

    batch: int = setting(1, "batch size of the timed inputs")
    seq_len: int = setting(64, "sequence length of the timed inputs (text models)")
    warmup: int = setting(20, "untimed runs first")
    runs: int = setting(200, "timed runs")
    rounds: int = setting(10, "host: the runs are timed in this many interleaved rounds, every variant in each round "
                          "(the order rotated), so background load lands on all variants alike")
    budget_s: float = setting(20.0, "host: while a figure is noisy (its round medians spread over 10 % of their "
                              "median) or other processes take CPU, extra rounds run until this many seconds of "
                              "timing (at most 4x rounds); 0 = no extra rounds")
    threads: int = setting(0, "threads (0 = the target profile's)")
    new_tokens: int = setting(32, "generation timing (language modelling, seq2seq): tokens of each timed greedy decode, "
                             "EOS ignored; time to first token and tokens/s (0 = off)")
    generation_runs: int = setting(5, "generation timing: timed decodes (after one untimed)")
    provider: str = setting("cpu", "ONNX Runtime execution provider for measured ONNX latency: cpu | cuda | tensorrt (cuda/tensorrt: the gpu extra; TensorRT engines cached in the run's trt_cache/)", hash="if_set")


@dataclass
class EvalConfig:
    """[eval]: quality metrics and latency of every variant."""

    targets: list[str] = setting(["host"], "device profiles to report latency for (measured where reachable, else estimated)")
    max_quality_drop: float = setting(0.01, "the recommendation's budget: largest drop of the main metric vs the baseline (fraction, or points/100)")
    latency: LatencyConfig = field(default_factory=LatencyConfig, metadata={"doc": "latency measurement"})
    robustness: bool = setting(False, "also evaluate under perturbations (text: swaps, drops, casing; images: noise, shifts)")
    max_new_tokens: int = setting(32, "generation (seq2seq, language modelling): tokens to generate")
    num_beams: int = setting(1, "generation: 1 = greedy, >1 = beam search")
    perplexity_stride: int = setting(0, "perplexity: sliding-window stride (0 = half the window)")
    limit: int = setting(0, "evaluate at most this many eval examples (0 = all)")


@dataclass
class Recipe:
    """A recipe: one run of the toolkit (DESIGN.md)."""

    schema_version: int = setting(SCHEMA_VERSION, "recipe format version")
    name: str = setting("run", "identifies the run; the default run directory is runs/<name>")
    task: str = setting("text-classification", "text-classification | language-modeling | seq2seq | image-classification")
    seed: int = setting(0, "the one seed of the run (data split, initialisation, order, dropout)")
    data: DataConfig = field(default_factory=DataConfig, metadata={"doc": "data"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "model"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"doc": "training"})
    compress: list[dict] = field(default_factory=list, metadata={"doc": "compression steps, in order ([[compress]] tables; keys per method)"})
    export: ExportConfig = field(default_factory=ExportConfig, metadata={"doc": "export"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"doc": "evaluation"})
    # Where the recipe was read from: relative data paths resolve against its folder.
    source_path: str = field(default="", metadata={"doc": "internal", "internal": True}, compare=False)
    # The [[compress]] tables parsed into typed step settings (by validate), with the tables they were parsed from.
    _parsed: tuple = field(default=(), metadata={"doc": "internal", "internal": True}, compare=False, repr=False)

    @property
    def steps(self) -> list:
        """The [[compress]] steps as typed settings (``toolkit.steps``): names unique, parents filled in.

        Parsed once when the recipe is validated; parsed again only when ``compress`` was replaced since.
        """
        if not self._parsed or self._parsed[0] != self.compress:
            from toolkit.steps import parse_steps

            self._parsed = (_deepcopy(self.compress), parse_steps(self.compress, self.source_path or "recipe"))
        return list(self._parsed[1])

    def base_dir(self) -> Path:
        """The folder relative data/model paths are resolved against (the recipe's, else the cwd)."""
        return Path(self.source_path).parent if self.source_path else Path.cwd()

    def resolve_path(self, value: str) -> Path:
        """A data/model path from the recipe, made absolute against the recipe's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir() / p)


# Common names from other tools, so a user coming from them gets pointed at ours.
ALIASES: dict[str, dict[str, str]] = {
    "train": {
        "learning_rate": "lr", "lr_schedule": "schedule", "scheduler": "schedule", "lr_scheduler_type": "schedule",
        "warmup_steps": "warmup", "warmup_ratio": "warmup", "num_epochs": "epochs", "num_train_epochs": "epochs",
        "batch": "batch_size", "per_device_train_batch_size": "batch_size", "mixed_precision": "precision",
        "fp16": "precision", "bf16": "precision", "gradient_accumulation_steps": "grad_accum",
        "max_grad_norm": "clip", "grad_clip": "clip", "save_steps": "checkpoint_every",
        "save_total_limit": "keep_checkpoints", "logging_steps": "log_every", "eval_steps": "eval_every",
        "steps": "max_steps", "patience": "early_stopping",
    },
    "data": {"test": "eval", "valid": "validation", "dev": "validation", "text": "text_column",
             "label": "label_column", "max_seq_length": "max_length", "cleaning": "clean"},
    "model": {"path": "source", "name_or_path": "source", "model_name_or_path": "source",
              "num_layers": "layers", "n_layer": "layers", "num_heads": "heads", "d_model": "hidden_size"},
}


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' -> (['train', 'lr'], 3e-4). Values are TOML literals; bare words are strings."""
    if "=" not in text:
        raise UserError(f"--set {text}: expected key=value, e.g. --set train.lr=3e-4")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as bf16 or a path
    return key.split("."), value


def _apply_override(data: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    cls: type = Recipe
    node = data
    for i, part in enumerate(path):
        known = fields_of(cls)
        section = ".".join(path[:i])
        if part not in known:
            choices = {**{k: k for k in known}, **ALIASES.get(section, {})}
            label = f"[{section}]" if section else "the top level"
            raise UserError(f"--set {text}: unknown key '{part}' in {label}{did_you_mean(part, choices)}")
        tp = typing.get_type_hints(cls)[part]
        if i == len(path) - 1:
            # A command-line value arrives as text: give it the field's type where it reads as one.
            if isinstance(value, (int, float)) and not isinstance(value, bool) and tp is str:
                value = text.split("=", 1)[1].strip()
            if tp is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            node[part] = value
        else:
            if not dataclasses.is_dataclass(tp):
                raise UserError(f"--set {text}: '{part}' is not a section")
            node = node.setdefault(part, {})
            cls = tp


def validate(recipe: Recipe, file: str) -> None:
    """Value checks beyond types. Raises UserError naming the key."""
    t, d = recipe.train, recipe.data

    def bad(key: str, value: Any, why: str) -> UserError:
        return UserError(f"{file}: {key} = {value!r}: {why}")

    if recipe.schema_version != SCHEMA_VERSION:
        raise bad("schema_version", recipe.schema_version, f"this toolkit reads version {SCHEMA_VERSION}")
    from toolkit.registry import FORMATS, TASKS

    if recipe.task not in TASKS:
        raise UserError(f"{file}: task = '{recipe.task}' is not a task{did_you_mean(recipe.task, TASKS.names())}")
    if not recipe.name or "/" in recipe.name or recipe.name.startswith("."):
        raise bad("name", recipe.name, "must be a plain, non-empty name (it names the run directory)")
    checks = [
        ("train.lr", t.lr, t.lr > 0 and math.isfinite(t.lr), "must be a positive number, e.g. 5e-4"),
        ("train.batch_size", t.batch_size, t.batch_size >= 1, "must be at least 1"),
        ("train.epochs", t.epochs, t.epochs > 0 or t.max_steps > 0 or not t.enabled,
         "must be more than 0 (or set train.max_steps, or [train] enabled = false)"),
        ("train.max_steps", t.max_steps, t.max_steps >= 0, "must be >= 0 (0 = from epochs)"),
        ("train.grad_accum", t.grad_accum, 1 <= t.grad_accum <= t.batch_size, "must be between 1 and batch_size"),
        ("train.warmup", t.warmup, t.warmup >= 0, "must be >= 0"),
        ("train.weight_decay", t.weight_decay, t.weight_decay >= 0, "must be >= 0"),
        ("train.dropout", t.dropout, 0 <= t.dropout < 1, "must be in [0, 1)"),
        ("train.clip", t.clip, t.clip >= 0, "must be >= 0 (0 = off)"),
        ("train.checkpoint_every", t.checkpoint_every, t.checkpoint_every >= 0, "must be >= 0"),
        ("train.keep_checkpoints", t.keep_checkpoints, t.keep_checkpoints >= 1, "must be at least 1"),
        ("train.log_every", t.log_every, t.log_every >= 1, "must be at least 1"),
        ("train.eval_every", t.eval_every, t.eval_every >= 0, "must be >= 0"),
        ("train.early_stopping", t.early_stopping, t.early_stopping >= 0, "must be >= 0"),
        ("train.max_bad_steps", t.max_bad_steps, t.max_bad_steps >= 1, "must be at least 1"),
        ("train.threads", t.threads, t.threads >= 0, "must be >= 0"),
        ("data.limit", d.limit, d.limit >= 0, "must be >= 0 (0 = all)"),
        ("data.max_length", d.max_length, d.max_length >= 2, "must be at least 2"),
        ("model.vocab_size", recipe.model.vocab_size, recipe.model.vocab_size >= 64, "must be at least 64"),
    ]
    for key, value, ok, why in checks:
        if not ok:
            raise bad(key, value, why)
    if t.precision not in PRECISIONS:
        raise UserError(f"{file}: train.precision = '{t.precision}' is not one of {', '.join(PRECISIONS)}{did_you_mean(t.precision, list(PRECISIONS))}")
    if t.schedule not in SCHEDULES:
        raise UserError(f"{file}: train.schedule = '{t.schedule}' is not one of {', '.join(SCHEDULES)}{did_you_mean(t.schedule, list(SCHEDULES))}")
    if t.device not in ("auto", "cpu", "cuda"):
        raise bad("train.device", t.device, "must be auto, cpu or cuda")
    if len(d.split) != 3 or any(x < 0 for x in d.split) or abs(sum(d.split) - 1.0) > 1e-6:
        raise bad("data.split", d.split, "must be three non-negative fractions (train, validation, eval) that sum to 1")
    if d.split[0] <= 0:
        raise bad("data.split", d.split, "the train fraction must be above 0")
    for step in d.clean:
        if step not in CLEAN_STEPS:
            raise UserError(f"{file}: data.clean: unknown step '{step}'{did_you_mean(step, list(CLEAN_STEPS))}")
    for step in d.augment:
        if step not in AUGMENTATIONS:
            raise UserError(f"{file}: data.augment: unknown step '{step}'{did_you_mean(step, list(AUGMENTATIONS))}")
    if isinstance(d.header, str) and d.header != "auto":
        raise bad("data.header", d.header, "must be true, false or \"auto\"")
    e, x = recipe.eval, recipe.export
    for fmt in x.formats:
        if fmt not in FORMATS:
            raise UserError(f"{file}: export.formats: unknown format '{fmt}'{did_you_mean(fmt, FORMATS.names())}")
    more = [
        ("export.opset", x.opset, 13 <= x.opset <= 23, "must be between 13 and 23"),
        ("export.atol", x.atol, x.atol > 0, "must be > 0"),
        ("export.min_agreement", x.min_agreement, 0 <= x.min_agreement <= 1, "must be in [0, 1]"),
        ("export.min_cosine", x.min_cosine, -1 <= x.min_cosine <= 1, "must be in [-1, 1]"),
        ("export.verify_samples", x.verify_samples, x.verify_samples >= 1, "must be at least 1"),
        ("eval.max_quality_drop", e.max_quality_drop, 0 <= e.max_quality_drop < 1, "must be in [0, 1)"),
        ("eval.latency.batch", e.latency.batch, e.latency.batch >= 1, "must be at least 1"),
        ("eval.latency.seq_len", e.latency.seq_len, e.latency.seq_len >= 1, "must be at least 1"),
        ("eval.latency.warmup", e.latency.warmup, e.latency.warmup >= 0, "must be >= 0"),
        ("eval.latency.runs", e.latency.runs, e.latency.runs >= 1, "must be at least 1"),
        ("eval.latency.rounds", e.latency.rounds, e.latency.rounds >= 1, "must be at least 1"),
        ("eval.latency.budget_s", e.latency.budget_s, e.latency.budget_s >= 0, "must be >= 0 (0 = no extra rounds)"),
        ("eval.latency.threads", e.latency.threads, e.latency.threads >= 0, "must be >= 0"),
        ("eval.latency.new_tokens", e.latency.new_tokens, e.latency.new_tokens >= 0, "must be >= 0 (0 = off)"),
        ("eval.latency.generation_runs", e.latency.generation_runs, e.latency.generation_runs >= 1,
         "must be at least 1"),
        ("eval.max_new_tokens", e.max_new_tokens, e.max_new_tokens >= 1, "must be at least 1"),
        ("eval.num_beams", e.num_beams, e.num_beams >= 1, "must be at least 1"),
        ("eval.perplexity_stride", e.perplexity_stride, e.perplexity_stride >= 0, "must be >= 0"),
        ("eval.limit", e.limit, e.limit >= 0, "must be >= 0"),
    ]
    for key, value, ok, why in more:
        if not ok:
            raise bad(key, value, why)
    if not e.targets:
        raise bad("eval.targets", e.targets, "name at least one target, e.g. [\"host\"]")
    if e.latency.provider not in ("cpu", "cuda", "tensorrt"):
        raise UserError(f"{file}: eval.latency.provider = '{e.latency.provider}' is not one of cpu, cuda, tensorrt"
                        f"{did_you_mean(e.latency.provider, ['cpu', 'cuda', 'tensorrt'])}")
    if recipe.compress:
        # Each method's keys are checked by its own settings dataclass (the compression registry), once.
        from toolkit.steps import parse_steps

        recipe._parsed = (_deepcopy(recipe.compress), parse_steps(recipe.compress, file))
    for key in ("train", "validation", "eval"):
        value = getattr(d, key)
        if isinstance(value, list) and len(value) != 2:
            raise bad(f"data.{key}", value, "a list must name two line-aligned files: [source, target]")


def recipe_from_dict(data: dict[str, Any], file: str = "<recipe>", overrides: list[str] = ()) -> Recipe:
    """Build and validate a Recipe from a TOML-shaped dict, after applying ``--set`` overrides."""
    data = _deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        _apply_override(data, path, value, text)
    recipe = build(Recipe, data, "", file, ALIASES)
    validate(recipe, file)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a recipe TOML file. Raises UserError naming the file, line or key on any problem."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such recipe file (give a path to a .toml recipe, or omit it for the demo)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (byte {e.start}); save the recipe as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{p}: not valid TOML: {e}") from None
    recipe = recipe_from_dict(data, str(p), overrides)
    recipe.source_path = str(p.resolve())
    return recipe


def dumps_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML text (every default filled in)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in to_dict(recipe).items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        elif not (isinstance(value, list) and not value and key == "compress"):
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    for name, items in arrays:
        for item in items:
            lines.append(f"\n[[{name}]]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def _toml_key(k: str) -> str:
    import re

    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else '"' + k.replace('"', '\\"') + '"'


def _toml_value(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def hashed_dict(obj: Any) -> dict[str, Any]:
    """A settings dataclass as a dict for skip/rerun hashes: keys that do not change any result (metadata
    ``hash = "never"``, e.g. train.profile) are left out, and so are keys added later while at their default
    (``hash = "if_set"``), so a run directory made before such a key existed keeps its hashes."""
    out: dict[str, Any] = {}
    for name, f in fields_of(type(obj)).items():
        value = getattr(obj, name)
        rule = f.metadata.get("hash")
        if rule == "never" or (rule == "if_set" and value == f.default):
            continue
        out[name] = hashed_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def config_hash(obj: Any) -> str:
    """A short stable hash of a config (dataclass or dict), for skip/rerun decisions and the manifest."""
    import hashlib
    import json

    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def reference_markdown() -> str:
    """The recipe reference (every key, its default and doc string) as Markdown tables, for the README."""
    out = []
    for section, cls in (("", Recipe), ("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig),
                         ("train.lora", LoraConfig),
                         ("export", ExportConfig), ("eval", EvalConfig), ("eval.latency", LatencyConfig)):
        out.append(f"\n**{'[' + section + ']' if section else 'top level'}**\n\n| key | default | meaning |\n|---|---|---|")
        obj = cls()
        for name, f in fields_of(cls).items():
            value = getattr(obj, name)
            if dataclasses.is_dataclass(value) or name == "compress":
                continue
            doc = f.metadata["doc"].replace("|", "\\|")
            out.append(f"| `{name}` | `{_toml_value(value)}` | {doc} |")
    return "\n".join(out) + "\n"


def with_absolute_paths(recipe: Recipe) -> Recipe:
    """A copy whose data/model paths are absolute, for the run directory's recipe.toml: a run resumed from
    its own recipe.toml reads the same files, wherever that file lives."""
    def fix(value: Any) -> Any:
        if isinstance(value, list):
            return [fix(v) for v in value]
        if not value or not isinstance(value, str) or value.startswith("builtin:"):
            return value
        return str(recipe.resolve_path(value))

    d = dataclasses.replace(recipe.data, **{k: fix(getattr(recipe.data, k)) for k in ("train", "validation", "eval")})
    source = recipe.model.source
    m = recipe.model if not source or source.startswith("builtin:") else dataclasses.replace(recipe.model, source=fix(source))
    return dataclasses.replace(recipe, data=d, model=m)

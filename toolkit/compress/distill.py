"""Knowledge distillation (``method = "distill"``): a smaller student learns the teacher's outputs.

Loss (Hinton et al. 2015): ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE``
with the labels, plus optional TinyBERT-style hidden-state matching (MSE, through a learned linear projection
when the widths differ) and attention matching (squared distance between attention maps, TinyBERT's MSE; maps
averaged over heads when the head counts differ). Token tasks
(language modelling, seq2seq) distil every non-padding token's distribution.

Students:
- ``layers = [0, 2, 4]``: layer dropping — a copy of the parent keeping those layers with their weights
  (DistilBERT's initialisation; the default is every other layer), for every transformer the architecture
  adapter can read (encoders, decoders, encoder-decoders: each stack keeps those layers);
- ``layers = 3`` (a number) and/or ``hidden_size`` / ``heads``: a fresh model of the parent's family;
- ``widths = [...]`` for the CNN: a fresh, narrower/shallower EdgeCNN.
The teacher (default: the parent variant) runs under ``torch.inference_mode``; ``cache_teacher = true`` runs it
once per training example beforehand (valid only when the inputs are the same every epoch: no data.augment).
The student is written to variants/<name>/model/ by the task's own ``Prepared.save``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.compress._shared.finetune import FinetuneKeys, finetune, pytorch_parent, weights_bytes
from toolkit.compress.context import Context
from toolkit.errors import UserError
from toolkit.schema import setting
from toolkit.steps import handler, method
from toolkit.variants import Variant, load_variants

CACHE_LIMIT_BYTES = 4 << 30


@method("distill")
@dataclass
class DistillConfig(FinetuneKeys):
    """[[compress]] method = "distill"."""

    teacher: str = setting("", "the teacher: an earlier variant's name or a model folder (default: the parent variant)")
    layers: list[int] | int = setting([], "a list keeps those parent layers with their weights (layer dropping); a number "
                                     "builds a fresh model with that many layers; default: every other layer")
    hidden_size: int = setting(0, "width of a fresh student of the parent's family (same tokenizer)")
    heads: int = setting(0, "attention heads of a fresh student (default: the parent's, when they divide hidden_size)")
    widths: list[int] = setting([], "CNN students: the widths of a fresh, narrower CNN of the parent's family (the built-in: "
                                  "stem and block widths; Hugging Face CNNs: one per stage); default: half the parent's")
    temperature: float = setting(2.0, "softmax temperature T of the distillation KL (scaled by T^2)")
    alpha: float = setting(0.5, "weight of the distillation KL; 1 - alpha weighs the labels' cross-entropy")
    hidden_weight: float = setting(0.0, "weight of hidden-state matching (MSE, TinyBERT); transformers only")
    attention_weight: float = setting(0.0, "weight of attention-map matching (MSE, TinyBERT); transformers only")
    cache_teacher: bool = setting(False, "run the teacher once per training example up front (not with data.augment)")

    def check(self, where: str) -> None:
        super().check(where)
        if not self.temperature > 0:
            raise UserError(f"{where}: temperature = {self.temperature!r} must be > 0 (e.g. 2.0)")
        if not 0 <= self.alpha <= 1:
            raise UserError(f"{where}: alpha = {self.alpha!r} must be in [0, 1]")
        for key in ("hidden_weight", "attention_weight", "hidden_size", "heads"):
            if getattr(self, key) < 0:
                raise UserError(f"{where}: {key} = {getattr(self, key)!r} must be >= 0")
        if isinstance(self.layers, int) and self.layers < 1:
            raise UserError(f"{where}: layers = {self.layers} must be at least 1 (or a list of layer indices)")
        if isinstance(self.layers, list):
            if any(i < 0 for i in self.layers):
                raise UserError(f"{where}: layers = {self.layers}: layer indices start at 0")
            if self.layers != sorted(set(self.layers)):
                raise UserError(f"{where}: layers = {self.layers}: list each teacher layer once, in increasing order")
        if any(w < 1 for w in self.widths):
            raise UserError(f"{where}: widths = {self.widths}: every width must be at least 1")
        if self.cache_teacher and (self.hidden_weight or self.attention_weight):
            raise UserError(f"{where}: cache_teacher = true caches logits only, but hidden_weight/attention_weight "
                            f"need the teacher's hidden states every step: set cache_teacher = false")


    def check_model(self, model: Any, task: Any, where: str, from_base: bool) -> None:
        if model is None:
            raise UserError(f"{where}: distillation needs a PyTorch model, and model.source is an ONNX file; "
                            f"quantize it instead (method = \"quantize\")")
        import torch

        with torch.device("meta"):  # the student this step would build, without weights
            if from_base:
                build_student(self, model, model, bool(self.teacher), where, 0)
            else:
                from toolkit.arch import adapter_for

                adapter_for(model)


# ---- the student ----------------------------------------------------------------------------------------------

def build_student(step: DistillConfig, source: Any, teacher: Any, explicit_teacher: bool, where: str,
                  seed: int) -> tuple[Any, dict[str, Any]]:
    """The student and how it was made ({"student": kind, "layers_kept"?, "layer_map"?})."""
    from toolkit.arch import adapter_for

    adapter = adapter_for(source)
    given = bool(step.layers) or bool(step.hidden_size) or bool(step.heads)
    if adapter.kind == "cnn":
        if isinstance(step.layers, list) and step.layers and not (step.hidden_size or step.heads or step.widths):
            # a CNN whose stages repeat blocks keeps the chosen blocks of each stage (the adapter refuses otherwise)
            return adapter.drop_layers(source, step.layers, where), {"student": "layer-drop",
                                                                     "layers_kept": step.layers}
        if given:
            raise UserError(f"{where}: CNN students are set with widths = [...] (layers/hidden_size/heads are for "
                            f"transformers)")
        if step.hidden_weight or step.attention_weight:
            raise UserError(f"{where}: hidden_weight/attention_weight match transformer layers; for the CNN "
                            f"use logit distillation only (set them to 0)")
        if not step.widths and explicit_teacher:
            return source, {"student": "as-is"}
        widths = step.widths or adapter.default_student_widths(source)
        return adapter.narrow_student(source, widths, seed), {"student": "cnn-widths", "widths": widths}
    if step.widths:
        raise UserError(f"{where}: widths = {step.widths} is for CNN students; for a transformer give layers, "
                        f"hidden_size or heads")
    t_adapter = adapter_for(teacher)
    src_width, t_width = adapter.width(source), t_adapter.width(teacher)
    total, t_total = adapter.layer_count(source), t_adapter.layer_count(teacher)
    if not given and explicit_teacher:
        return source, {"student": "as-is", "layer_map": uniform_map(total, t_total)}
    if isinstance(step.layers, list) and (step.layers or not given):
        keep = step.layers or list(range(0, total, 2))
        if step.hidden_size and step.hidden_size != src_width or src_width > t_width:
            wide = step.hidden_size or src_width
            how = "wider than" if wide > t_width else "narrower than"
            raise UserError(f"{where}: layer dropping copies the teacher's layers, so the student keeps the width "
                            f"{src_width}, but hidden_size {wide} is {how} the teacher's {t_width}: drop hidden_size "
                            f"(or give layers = <number> for a fresh, smaller model)")
        if step.heads and step.heads != adapter.heads(source):
            raise UserError(f"{where}: layer dropping keeps the teacher's {adapter.heads(source)} "
                            f"heads; drop heads = {step.heads} (prune heads with method = \"prune\")")
        if len(keep) >= total and not step.layers:
            raise UserError(f"{where}: the parent has {total} layer(s): nothing to drop; give hidden_size or "
                            f"layers = <number> for a smaller student")
        student = adapter.drop_layers(source, keep, where)
        return student, {"student": "layer-drop", "layers_kept": keep,
                         "layer_map": keep if t_total == total else uniform_map(len(keep), t_total)}
    count = step.layers if isinstance(step.layers, int) else 0
    student = adapter.fresh_student(source, count, step.hidden_size, step.heads, where, seed)
    return student, {"student": "config", "layer_map": uniform_map(adapter.layer_count(student), t_total)}


def uniform_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer matched to each student layer: every (n_teacher / n_student)-th (TinyBERT's mapping)."""
    return [max(0, round((i + 1) * n_teacher / n_student) - 1) for i in range(n_student)]


# ---- teacher and compatibility --------------------------------------------------------------------------------

def resolve_teacher(step: DistillConfig, parent: Variant, ctx: Context, where: str) -> tuple[Path, str, bool]:
    """(model folder, label, explicitly given?) of the teacher."""
    if not step.teacher:
        return pytorch_parent(parent, where, "distillation"), parent.name, False
    variants = load_variants(ctx.run.variants)
    if step.teacher in variants:
        return pytorch_parent(variants[step.teacher], where, "a teacher"), step.teacher, True
    path = ctx.recipe.resolve_path(step.teacher)
    if path.is_dir():
        return path, str(path), True
    raise UserError(f"{where}: teacher = '{step.teacher}' is neither an earlier variant "
                    f"({', '.join(variants) or 'none yet'}) nor a model folder")


def check_compatible(teacher_dir: Path, student_dir: Path, prepared: Any, teacher: Any, task: Any,
                     where: str) -> None:
    """Teacher and student must read the same inputs and predict the same classes/tokens."""
    from toolkit.models import load_tokenizer, read_labels

    if prepared.tokenizer is not None and teacher_dir.resolve() != student_dir.resolve():
        t_vocab, s_vocab = load_tokenizer(teacher_dir).get_vocab(), prepared.tokenizer.get_vocab()
        if t_vocab != s_vocab:
            why = f"{len(t_vocab)} vs {len(s_vocab)} tokens" if len(t_vocab) != len(s_vocab) else "same size, other ids"
            raise UserError(f"{where}: the teacher ({teacher_dir}) and the student ({student_dir}) use different "
                            f"tokenizers ({why}); distillation compares them token by token: use a teacher "
                            f"trained with the student's tokenizer")
    if task.classifies:
        t_labels = read_labels(teacher_dir, teacher.config) or [str(i) for i in range(teacher.config.num_labels)]
        if len(t_labels) != len(prepared.labels) or (read_labels(teacher_dir, teacher.config)
                                                     and t_labels != prepared.labels):
            raise UserError(f"{where}: the teacher predicts {t_labels[:6]}, the student {prepared.labels[:6]}: "
                            f"they must share the classes, in the same order")


# ---- the distillation model ---------------------------------------------------------------------------------

def kl_per_item(student_logits: Any, teacher_logits: Any, mask: Any | None, temperature: float) -> Any:
    """KL(softmax(teacher/T) || softmax(student/T)) summed over classes: (B,) or (B, T) masked to 0."""
    import torch

    t = torch.log_softmax(teacher_logits.float() / temperature, -1)
    s = torch.log_softmax(student_logits.float() / temperature, -1)
    kl = (t.exp() * (t - s)).sum(-1)
    return kl * mask if mask is not None else kl


def mean_kl(student_logits: Any, teacher_logits: Any, batch: dict[str, Any], task: Any, temperature: float) -> Any:
    """Mean KL per example (classification) or per real token (the task's token mask: LM, seq2seq)."""
    mask = task.token_mask(batch, student_logits.shape[1]) if student_logits.dim() == 3 else None
    kl = kl_per_item(student_logits, teacher_logits, mask, temperature)
    return kl.sum() / mask.sum().clamp(min=1) if mask is not None else kl.mean()


def _masked_mean(values: Any, mask: Any | None) -> Any:
    """Mean of (B, T) ``values`` over the positions where ``mask`` (B, T) is 1."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)[:, : values.shape[1]]
    return (values * mask).sum() / mask.sum().clamp(min=1)


@functools.cache
def distiller_class() -> type:
    """The nn.Module that ``fit`` trains: built on first use so that parsing a recipe never imports torch."""
    import torch
    from torch import nn

    class Distiller(nn.Module):
        """``model(**batch).loss`` is the distillation loss while training; in eval mode the student's own output
        (so fit's validation reports the student's real loss and metrics).

        The teacher is held in a tuple, not as a submodule: it gets no gradients, no optimizer state and stays
        out of the checkpoints; ``_apply`` moves it with the student.
        """

        def __init__(self, student: Any, teacher: Any, task: Any, step: DistillConfig, layer_map: list[int],
                     widths: tuple[int, int], seed: int) -> None:
            from toolkit.tasks.common import seeded

            super().__init__()
            self.student = student
            self._teacher = (teacher.eval(),)
            self.task, self.T, self.alpha = task, step.temperature, step.alpha
            self.hidden_weight, self.attention_weight = step.hidden_weight, step.attention_weight
            self.layer_map = layer_map
            self.proj = None
            if self.hidden_weight and widths[0] != widths[1]:
                streams = 2 if len(task.graphs) > 1 else 1  # encoder-decoders: both stacks are matched
                with seeded(seed):  # TinyBERT's W_h: one learned projection per matched layer and stream
                    self.proj = nn.ModuleList(nn.Linear(widths[0], widths[1], bias=False)
                                              for _ in range(streams * (len(layer_map) + 1)))

        @property
        def teacher(self) -> Any:
            return self._teacher[0]

        def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "Distiller":
            super()._apply(fn, *args, **kwargs)
            self.teacher._apply(fn, *args, **kwargs)
            return self

        def forward(self, **batch: Any) -> Any:
            cached = batch.pop("teacher_logits", None)
            if not self.training:
                return self.student(**batch)
            extra = {}
            if self.hidden_weight:
                extra["output_hidden_states"] = True
            if self.attention_weight:
                extra["output_attentions"] = True
            out = self.student(**batch, **extra)
            t_out = None
            if cached is None:
                with torch.inference_mode():
                    t_out = self.teacher(**batch, **extra)
                # inference tensors cannot be saved for backward: clone them out of inference mode
                t_out = {k: _clone(v) for k, v in t_out.items()}
                cached = t_out["logits"]
            kd = mean_kl(out.logits, cached, batch, self.task, self.T) * self.T ** 2
            loss = self.alpha * kd + (1 - self.alpha) * out.loss
            if self.hidden_weight:
                loss = loss + self.hidden_weight * self._match(out, t_out, batch, "hidden_states")
            if self.attention_weight:
                loss = loss + self.attention_weight * self._match(out, t_out, batch, "attentions")
            return DistillOutput(loss=loss, logits=out.logits)

        def _streams(self, s_out: Any, t_out: dict[str, Any], batch: dict[str, Any], kind: str) -> list:
            if f"encoder_{kind}" in t_out:  # an encoder-decoder: match the encoder and the decoder
                return [(s_out[f"encoder_{kind}"], t_out[f"encoder_{kind}"], batch["attention_mask"]),
                        (s_out[f"decoder_{kind}"], t_out[f"decoder_{kind}"], (batch["labels"] != -100).long())]
            return [(s_out[kind], t_out[kind], batch.get("attention_mask"))]

        def _match(self, s_out: Any, t_out: dict[str, Any], batch: dict[str, Any], kind: str) -> Any:
            """Hidden states: MSE per position (embeddings and each matched layer, through W_h when the widths
            differ). Attentions: squared distance of each query's attention distribution (TinyBERT's MSE on
            attention maps; head-averaged when the head counts differ), over real query positions."""
            terms, k = [], 0
            for s_all, t_all, mask in self._streams(s_out, t_out, batch, kind):
                if kind == "hidden_states":
                    pairs = [(0, 0)] + [(i + 1, j + 1) for i, j in enumerate(self.layer_map)]
                else:
                    pairs = list(enumerate(self.layer_map))
                for i, j in pairs:
                    s, t = s_all[i].float(), t_all[j].float()
                    if kind == "hidden_states":
                        if self.proj is not None:
                            s = self.proj[k](s)
                        k += 1
                        terms.append(_masked_mean((s - t).pow(2).mean(-1), mask))  # (B, T) -> ()
                    else:
                        if s.shape[1] != t.shape[1]:
                            s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
                        per_query = (s - t).pow(2).sum(-1).mean(1)  # (B, H, Tq, Tk) -> (B, Tq)
                        terms.append(_masked_mean(per_query, mask))
            return torch.stack(terms).mean()

    return Distiller


def _clone(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_clone(v) for v in value)
    return value.clone() if hasattr(value, "clone") else value


@dataclass
class DistillOutput:
    loss: Any
    logits: Any


# ---- teacher cache and measurement -----------------------------------------------------------------------------

def _example_logits(logits: Any, batch: dict[str, Any], task: Any) -> list[Any]:
    """Per example: (K,) logits, or (n_tokens, V) for the real tokens (padding is on the right)."""
    mask = task.token_mask(batch, logits.shape[1]) if logits.dim() == 3 else None
    if mask is None:
        return list(logits)
    return [row[: int(m.sum())] for row, m in zip(logits, mask)]


def cache_teacher_logits(prepared: Any, teacher: Any, task: Any, batch_size: int, device: Any) -> Any:
    """A Prepared whose training batches carry ``teacher_logits``, computed once per training example.

    Raises:
        UserError: the cache would need more than 4 GiB (long token sequences x a large vocabulary).
    """
    import dataclasses

    import torch

    from toolkit.tasks.common import batches, eval_mode

    items = prepared.train_set
    per_token = not task.classifies
    if per_token:
        # the logits a token model makes per example: one per label (seq2seq) or per input token (causal LM)
        tokens = sum(len(it["labels"] if isinstance(it.get("labels"), list) else it["input_ids"]) for it in items)
        need = tokens * int(teacher.config.vocab_size) * 4
    else:
        need = len(items) * int(teacher.config.num_labels) * 4
    if need > CACHE_LIMIT_BYTES:
        raise UserError(f"cache_teacher = true would hold {need / 2**30:.1f} GiB of teacher logits "
                        f"({len(items)} examples); set cache_teacher = false to run the teacher each step")
    dtype = torch.float16 if need > (512 << 20) else torch.float32
    cache: list[Any] = []
    with eval_mode(teacher, device):
        for batch in batches(items, batch_size, prepared.collate, device):
            logits = teacher(**batch).logits
            cache += [row.to("cpu", dtype).clone() for row in _example_logits(logits, batch, task)]
    teacher.to("cpu")
    base = prepared.collate

    def collate(batch_items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = base(batch_items)
        if batch_items and "_kd_index" in batch_items[0]:
            rows = [cache[it["_kd_index"]] for it in batch_items]
            if per_token:
                length = (batch["labels"] if batch["labels"].dim() == 2 else batch["input_ids"]).shape[1]
                out = torch.zeros(len(rows), length, rows[0].shape[-1])  # (B, T, V), zeros at padding
                for j, r in enumerate(rows):
                    out[j, : r.shape[0]] = r.float()
            else:
                out = torch.stack(rows).float()  # (B, K)
            batch["teacher_logits"] = out
        return batch

    train = [{**it, "_kd_index": i} for i, it in enumerate(items)]
    return dataclasses.replace(prepared, train_set=train, collate=collate)


def dataset_kl(student: Any, teacher: Any, prepared: Any, items: Any, task: Any, batch_size: int,
               device: Any) -> float:
    """Mean KL(teacher || student) at T = 1 over ``items``: per example, or per real token for token tasks."""

    from toolkit.tasks.common import batches, eval_mode

    total, count = 0.0, 0.0
    with eval_mode(teacher, device), eval_mode(student, device):
        for batch in batches(items, batch_size, prepared.collate, device):
            s, t = student(**batch).logits, teacher(**batch).logits
            mask = task.token_mask(batch, s.shape[1]) if s.dim() == 3 else None
            kl = kl_per_item(s, t, mask, 1.0)
            total += float(kl.sum())
            count += float(mask.sum()) if mask is not None else kl.shape[0]
    student.to("cpu")
    teacher.to("cpu")
    return total / count if count else float("nan")


# ---- the handler ----------------------------------------------------------------------------------------------

@handler(DistillConfig)
def distill(step: DistillConfig, parent: Variant, ctx: Context) -> Variant:
    """Distil the teacher into a student built from the parent; write variants/<name>/model/."""
    from toolkit.arch import adapter_for
    from toolkit.compress._shared.finetune import device_for, train_settings
    from toolkit.models import count_params
    from toolkit.rundir import atomic_dir

    where = ctx.step_where(step)
    task = ctx.task
    student_dir = pytorch_parent(parent, where, "distillation")
    teacher_dir, teacher_label, explicit = resolve_teacher(step, parent, ctx, where)
    if step.cache_teacher and ctx.recipe.data.augment:
        raise UserError(f"{where}: cache_teacher = true stores the teacher's logits of each training example once, "
                        f"but data.augment = {ctx.recipe.data.augment} changes the images every epoch: set "
                        f"cache_teacher = false (or drop data.augment)")
    prepared = ctx.prepare(student_dir)
    teacher = ctx.task.load(teacher_dir).eval()
    teacher.requires_grad_(False)
    check_compatible(teacher_dir, student_dir, prepared, teacher, task, where)
    source = prepared.model
    student, made = build_student(step, source, teacher, explicit, where, ctx.recipe.seed)
    if step.attention_weight and hasattr(student, "set_attn_implementation"):
        student.set_attn_implementation("eager")  # sdpa returns no attention maps
    settings = train_settings(ctx.recipe, epochs=step.epochs, max_steps=step.max_steps, lr=step.lr,
                              batch_size=step.batch_size)
    device = device_for(settings)
    bs = settings.train.batch_size
    probe = list(prepared.val_set or prepared.train_set)[:256]
    kl_before = dataset_kl(student, teacher, prepared, probe, task, bs, device)
    job = cache_teacher_logits(prepared, teacher, task, bs, device) if step.cache_teacher else prepared
    widths = (adapter_for(student).width(student), adapter_for(teacher).width(teacher))
    model = distiller_class()(student, teacher, task, step, made.get("layer_map", []), widths, ctx.recipe.seed)
    result = finetune(ctx, step, job, model, recipe=settings, phase="distill", sources=(student_dir, teacher_dir))
    kl_after = dataset_kl(student, teacher, prepared, probe, task, bs, device)
    out = ctx.variant_dir(step.name) / "model"
    with atomic_dir(out) as tmp:
        prepared.save(student, tmp)
    info = {
        "teacher": teacher_label, **{k: v for k, v in made.items() if k != "layer_map"},
        "layer_map": made.get("layer_map") if (step.hidden_weight or step.attention_weight) else None,
        "params_before": count_params(source), "params_after": count_params(student),
        "teacher_params": count_params(teacher), "size_bytes": weights_bytes(out),
        "temperature": step.temperature, "alpha": step.alpha, "hidden_weight": step.hidden_weight,
        "attention_weight": step.attention_weight, "cache_teacher": step.cache_teacher,
        "kl_before": kl_before, "kl_after": kl_after,
        "kl_convention": f"KL(teacher || student) at T=1, mean per {'example' if task.classifies else 'token'}, "
                         f"on {len(probe)} {'validation' if prepared.val_set else 'training'} examples",
        "finetune": {"steps": result.state.step, "validation": result.validation},
    }
    ctx.emit.log(f"{step.name}: {info['student']} student, {info['params_before']:,} -> {info['params_after']:,} "
                 f"parameters; KL to the teacher {kl_before:.4f} -> {kl_after:.4f}")
    return Variant(name=step.name, parent=parent.name, method="distill", path=ctx.variant_dir(step.name),
                   model_dir=out, info=info)

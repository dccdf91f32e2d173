"""Distillation (toolkit/compress/distill.py) on tiny models of the four tasks.

Every check is computed here independently of the handler: KL divergences from the saved files, copied layers
tensor by tensor, cached and uncached teachers weight by weight.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit.compress.context import Context
from toolkit.steps import handler_for, parse_steps
from toolkit.variants import Variant
from toolkit.config import Recipe, load_recipe
from toolkit.data.types import Splits
from toolkit.errors import UserError
from toolkit.events import Emitter
from toolkit.rundir import RunDir
from toolkit.tasks import get_task

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "compress"
WORDS = {"pos": "good great happy fine lovely".split(), "neg": "bad awful sad poor dull".split(),
         "fill": "the a film plot actor was is very quite story".split()}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sentence(rng: random.Random, cue: str) -> str:
    words = [rng.choice(WORDS["fill"]) for _ in range(rng.randint(3, 9))]
    words.insert(rng.randrange(len(words) + 1), rng.choice(WORDS[cue]))
    return " ".join(words)


def make_splits(task: str, n: int = 60, seed: int = 0) -> Splits:
    rng = random.Random(seed)
    if task == "image-classification":
        g = np.random.default_rng(seed)
        ex = []
        for i in range(n):
            img = g.uniform(0, 0.3, size=(8, 8)).astype(np.float32)
            img[:, :4] += 0.6 if i % 2 else 0.0  # bright left half or bright right half
            img[:, 4:] += 0.0 if i % 2 else 0.6
            ex.append({"image": img, "label": "left" if i % 2 else "right"})
        return Splits(train=ex[:40], validation=ex[40:50], eval=ex[50:], labels=["left", "right"])
    if task == "text-classification":
        ex = [{"text": _sentence(rng, "pos" if i % 2 else "neg"), "label": "pos" if i % 2 else "neg"} for i in range(n)]
        return Splits(train=ex[:40], validation=ex[40:50], eval=ex[50:], labels=["neg", "pos"])
    if task == "language-modeling":
        ex = [{"text": _sentence(rng, "pos")} for _ in range(n)]
    else:
        ex = [{"source": s, "target": " ".join(reversed(s.split()))} for s in (_sentence(rng, "pos") for _ in range(n))]
    return Splits(train=ex[:40], validation=ex[40:50], eval=ex[50:])


def tiny_recipe(task: str, layers: int = 2, hidden: int = 32, heads: int = 2, vocab: int = 300) -> Recipe:
    r = Recipe(task=task, name="t", seed=0)
    r.data.max_length, r.model.vocab_size = 32, vocab
    if task != "image-classification":
        r.model.hidden_size, r.model.layers, r.model.heads = hidden, layers, heads
    t = r.train
    t.dropout, t.batch_size, t.lr, t.max_steps, t.warmup, t.log_every, t.checkpoint_every = 0.0, 8, 3e-3, 6, 0, 5, 0
    return r


def make_base(root: Path, task: str, train_steps: int = 40, splits: Splits | None = None, **dims) -> tuple[Context, Variant]:
    """A run with a (briefly trained) base variant, and the compression context over it."""
    from toolkit.events import null_emitter
    from toolkit.train.loop import fit

    recipe = tiny_recipe(task, **dims)
    run = RunDir(root)
    splits = splits or make_splits(task)
    prepared = get_task(task).prepare(recipe, splits, run.train)
    if train_steps:
        fit(dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, max_steps=train_steps)),
            get_task(task), prepared, run, null_emitter())
    model_dir = run.variant("base") / "model"
    prepared.save(prepared.model.cpu(), model_dir)
    base = Variant("base", None, "train", run.variant("base"), model_dir=model_dir)
    base.save()
    ctx = Context(recipe=recipe, run=run, emit=Emitter(run.events, "t").for_stage("compress"))
    ctx.cache["splits"] = splits
    return ctx, base


def run_step(ctx: Context, parent: Variant, table: dict) -> Variant:
    """Run one step (parsed as a recipe's would be) on ``parent``."""
    earlier = [] if parent.name == "base" else [{"method": "prune", "name": parent.name}]  # so 'from' parses
    step = parse_steps(earlier + [{"from": parent.name, **table}], "test.toml")[-1]
    return handler_for(step)(step, parent, ctx)


def token_mask(task: str, batch: dict) -> torch.Tensor | None:
    if task == "language-modeling":
        return batch["attention_mask"].double()
    if task == "seq2seq":
        return (batch["labels"] != -100).double()
    return None


def kl_on_validation(ctx: Context, teacher_dir: Path, student_dir: Path) -> float:
    """Mean KL(teacher || student) at T = 1 per example / real token, from the saved folders (float64)."""
    task = ctx.recipe.task
    prepared = ctx.prepare(student_dir)
    teacher, student = get_task(task).load(teacher_dir).eval(), get_task(task).load(student_dir).eval()
    total, count = 0.0, 0.0
    items = list(prepared.val_set)
    with torch.no_grad():
        for i in range(0, len(items), 4):
            batch = prepared.collate(items[i:i + 4])
            pt = torch.softmax(teacher(**batch).logits.double(), -1)
            ps = torch.softmax(student(**batch).logits.double(), -1)
            kl = (pt * (pt.log() - ps.log())).sum(-1)
            mask = token_mask(task, batch)
            if mask is not None:
                kl, n = (kl * mask[:, : kl.shape[1]]).sum(), mask.sum()
            else:
                kl, n = kl.sum(), kl.shape[0]
            total, count = total + float(kl), count + float(n)
    return total / count


# ---- the student ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task,lists", [
    ("text-classification", ["bert.encoder.layer"]),
    ("language-modeling", ["transformer.h"]),
    ("seq2seq", ["model.encoder.layers", "model.decoder.layers"]),
])
def test_layer_dropping_copies_the_teachers_layers(tmp_path, task, lists):
    from toolkit.arch import adapter_for

    recipe = tiny_recipe(task, layers=4)
    teacher = get_task(task).prepare(recipe, make_splits(task), tmp_path).model
    drop_layers = adapter_for(teacher).drop_layers
    assert [s.name for s in adapter_for(teacher).stacks(teacher)] == lists
    student = drop_layers(teacher, [0, 2], "test")
    t_state, s_state = teacher.state_dict(), student.state_dict()
    dropped = 0
    for key, tensor in t_state.items():
        prefix = next((p for p in lists if key.startswith(p + ".")), None)
        if prefix is None:
            assert torch.equal(s_state[key], tensor), key  # embeddings, norms, heads: the teacher's own
            continue
        layer, rest = key[len(prefix) + 1:].split(".", 1)
        if int(layer) in (0, 2):
            assert torch.equal(s_state[f"{prefix}.{[0, 2].index(int(layer))}.{rest}"], tensor), key
        else:
            dropped += tensor.numel()
    assert not any(k.startswith(tuple(f"{p}.2." for p in lists)) for k in s_state)  # only 2 layers left
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(student) == count(teacher) - dropped
    with pytest.raises(UserError, match="out of range.*0-3"):
        drop_layers(teacher, [0, 4], "test")


def test_layer_dropped_student_is_saved_reloads_and_exports(tmp_path):
    from toolkit.export.onnx import export_onnx

    ctx, base = make_base(tmp_path, "text-classification", train_steps=20, layers=4)
    v = run_step(ctx, base, {"method": "distill", "layers": [1, 3], "max_steps": 4, "lr": 1e-3})
    assert v.info["student"] == "layer-drop" and v.info["layers_kept"] == [1, 3]
    model = get_task("text-classification").load(v.model_dir)
    assert model.config.num_hidden_layers == 2 and len(model.bert.encoder.layer) == 2
    assert (v.model_dir / "tokenizer.json").is_file() and (v.model_dir / "labels.json").is_file()
    assert v.info["params_after"] == sum(p.numel() for p in model.parameters()) < v.info["params_before"]
    # the trainer's checkpoints and metrics, inside the variant's folder
    ckpts = sorted((v.path / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-000004"] and (ckpts[0] / "checksums.json").is_file()
    assert (v.path / "metrics.jsonl").is_file()
    assert [p.name for p in ctx.run.checkpoints.iterdir()] == ["step-000020"]  # the base's training, untouched
    result = export_onnx(v.model_dir, tmp_path / "onnx", "text-classification")
    assert result.files[0].is_file()


# ---- the loss -----------------------------------------------------------------------------------------------------

STUDENTS = {  # a fresh small student, except for text classification: 40 sentences are too few to grow one
    "text-classification": {"layers": [0], "lr": 1e-3},
    "language-modeling": {"layers": 1, "hidden_size": 16, "lr": 1e-2},
    "seq2seq": {"layers": 1, "hidden_size": 16, "lr": 1e-2},
    "image-classification": {"widths": [8, 8], "lr": 3e-2},
}


@pytest.mark.parametrize("task", list(STUDENTS))
def test_distillation_brings_the_student_to_the_teacher(tmp_path, task):
    ctx, base = make_base(tmp_path, task, train_steps=60)
    table = {"method": "distill", "alpha": 1.0, "max_steps": 30, **STUDENTS[task]}
    v = run_step(ctx, base, table)
    measured = kl_on_validation(ctx, base.model_dir, v.model_dir)
    assert measured == pytest.approx(v.info["kl_after"], rel=1e-3, abs=1e-6)
    assert measured < 0.6 * v.info["kl_before"], (v.info["kl_before"], measured)
    if task == "language-modeling":
        # the same student trained on the labels alone ends farther from the teacher
        plain = run_step(ctx, base, {**table, "name": "ce-only", "alpha": 0.0})
        assert measured < kl_on_validation(ctx, base.model_dir, plain.model_dir)


@pytest.mark.parametrize("task", ["language-modeling", "seq2seq"])
def test_cached_teacher_gives_the_same_student(tmp_path, task):
    ctx, base = make_base(tmp_path, task, train_steps=20)
    table = {"method": "distill", "layers": 1, "hidden_size": 16, "max_steps": 6, "lr": 1e-2}
    live = run_step(ctx, base, table)
    cached = run_step(ctx, base, {**table, "name": "cached", "cache_teacher": True})
    a, b = (get_task(task).load(v.model_dir).state_dict() for v in (live, cached))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("task,student", [
    ("text-classification", {"layers": 1, "hidden_size": 16, "heads": 1}),  # other width and heads: W_h, averaged maps
    ("seq2seq", {"layers": [0, 2]}),  # encoder and decoder streams
])
def test_hidden_and_attention_matching(tmp_path, task, student):
    ctx, base = make_base(tmp_path, task, train_steps=10, layers=4 if task == "seq2seq" else 2)
    v = run_step(ctx, base, {"method": "distill", "hidden_weight": 1.0, "attention_weight": 1.0, "max_steps": 4,
                             **student})
    assert v.info["layer_map"] == ([1] if task == "text-classification" else [0, 2])
    losses = [r["loss"] for r in map(__import__("json").loads, (v.path / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    assert losses and all(np.isfinite(losses))
    get_task(task).load(v.model_dir)


def test_an_interrupted_step_resumes_from_its_checkpoint(tmp_path):
    """fit() checkpoints every 3 steps; after a crash at step 4 the rerun continues from step 3 and ends where an
    uninterrupted run ends (CPU, fp32: bit-identical)."""
    from toolkit.events import read_events

    ctx, base = make_base(tmp_path / "a", "language-modeling", train_steps=10)
    ctx.recipe.train.checkpoint_every = 3
    table = {"method": "distill", "layers": 1, "hidden_size": 16, "max_steps": 6, "lr": 1e-2}
    straight = run_step(ctx, base, {**table, "name": "straight"})

    calls = {"n": 0}
    real_forward = torch.nn.Module.__call__

    def crash_at_step_5(self, *args, **kwargs):
        if type(self).__name__ == "Distiller" and self.training:
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt  # killed mid-step
        return real_forward(self, *args, **kwargs)

    torch.nn.Module.__call__ = crash_at_step_5
    try:
        with pytest.raises(KeyboardInterrupt):
            run_step(ctx, base, {**table, "name": "crashed"})
    finally:
        torch.nn.Module.__call__ = real_forward
    assert [p.name for p in (ctx.run.variant("crashed") / "checkpoints").glob("step-*")] == ["step-000003"]
    resumed = run_step(ctx, base, {**table, "name": "crashed"})
    assert any("resuming the distill fine-tune from step-000003" in e.get("message", "")
               for e in read_events(ctx.run.events))
    a, b = (get_task("language-modeling").load(v.model_dir).state_dict() for v in (straight, resumed))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_kd_loss_formula():
    """alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE, computed by hand."""
    from transformers.modeling_outputs import SequenceClassifierOutput

    from toolkit.compress.distill import DistillConfig, distiller_class

    torch.manual_seed(0)
    s_logits, t_logits, labels = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 1])

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.nn.Parameter(logits.clone())

        def forward(self, labels=None, **_):
            return SequenceClassifierOutput(loss=torch.nn.functional.cross_entropy(self.logits, labels), logits=self.logits)

    step = DistillConfig(temperature=3.0, alpha=0.3)
    model = distiller_class()(Fixed(s_logits), Fixed(t_logits), get_task("text-classification"), step, [], (0, 0),
                              0).train()
    got = model(labels=labels).loss
    T = 3.0
    pt, ps = torch.softmax(t_logits / T, -1), torch.softmax(s_logits / T, -1)
    kl = (pt * (pt.log() - ps.log())).sum(-1).mean()
    want = 0.3 * T * T * kl + 0.7 * torch.nn.functional.cross_entropy(s_logits, labels)
    torch.testing.assert_close(got, want)


# ---- bad input --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture,message", [
    ("distill_bad_alpha.toml", "alpha = 1.5 must be in"),
    ("distill_cache_hidden.toml", "cache_teacher = true caches logits only"),
    ("distill_layers_unsorted.toml", "increasing order"),
])
def test_bad_keys_are_one_line_errors(fixture, message):
    with pytest.raises(UserError, match=message) as e:
        load_recipe(FIXTURES / fixture)
    assert "\n" not in str(e.value) and fixture in str(e.value)


@pytest.mark.parametrize("fixture,message", [
    ("distill_wider_student.toml", "hidden_size 64 is wider than the teacher's 32"),
    ("distill_layer_out_of_range.toml", "index 5 is out of range"),
    ("distill_other_tokenizer.toml", "different tokenizers"),
])
def test_bad_students_are_one_line_errors(tmp_path, fixture, message):
    ctx, base = make_base(tmp_path / "run", "text-classification", train_steps=0, layers=4)
    recipe = load_recipe(FIXTURES / fixture)
    # a teacher variant with its own tokenizer (trained on other texts, another vocabulary size)
    other_ctx, other = make_base(tmp_path / "other", "text-classification", train_steps=0, vocab=200,
                                 splits=make_splits("text-classification", seed=7))
    other_dir = ctx.run.variant("other") / "model"
    import shutil

    shutil.copytree(other.model_dir, other_dir)
    Variant("other", None, "train", ctx.run.variant("other"), model_dir=other_dir).save()
    ctx.recipe = dataclasses.replace(ctx.recipe, source_path=recipe.source_path)
    (step,) = parse_steps(recipe.compress, str(FIXTURES / fixture))
    with pytest.raises(UserError, match=message) as e:
        handler_for(step)(step, base, ctx)
    assert "\n" not in str(e.value) and fixture in str(e.value)

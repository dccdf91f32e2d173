"""Pruning (toolkit/compress/prune.py): structured (heads, FFN neurons, CNN channels) and unstructured.

Independent checks: MACs against torch's FlopCounterMode; a structurally pruned model against the original with
the same units zeroed (they must compute the same function); sparsity recounted from the saved weights; the
cubic schedule against its formula.
"""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from toolkit.compress import prune as P
from toolkit.steps import handler_for, parse_steps
from toolkit.variants import Variant
from toolkit.config import load_recipe
from toolkit.errors import UserError
from toolkit.tasks import get_task

_spec = importlib.util.spec_from_file_location("compress_kit", Path(__file__).with_name("test_distill.py"))
kit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kit)  # the tiny runs of test_distill.py (splits, recipes, a base variant)
one_thread = kit.one_thread
FIXTURES = kit.FIXTURES
SEQ = 16


def tiny_model(task: str, tmp_path: Path, heads: int = 4):
    recipe = kit.tiny_recipe(task, heads=heads)
    prepared = get_task(task).prepare(recipe, kit.make_splits(task), tmp_path)
    return prepared, prepared.model.eval()


def example(task: str, prepared) -> dict:
    """One example of SEQ tokens (or one image), without labels."""
    if task == "image-classification":
        return {"pixel_values": prepared.collate(prepared.train_set[:1])["pixel_values"]}
    ids = torch.randint(3, 100, (1, SEQ))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if task == "seq2seq":
        batch["decoder_input_ids"] = ids
    return batch


def flop_counter_macs(model, batch) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**batch)
    return counter.get_total_flops() // 2


TASKS = ["text-classification", "language-modeling", "seq2seq", "image-classification"]


def prune_half(model, task: str, prepared, importance: str):
    """Structured pruning of half the units, through the model's architecture adapter."""
    from toolkit.arch import adapter_for

    adapter = adapter_for(model)
    groups = adapter.prune_groups(model, ["heads", "ffn"], get_task(task).kv_cache, [])
    scores = P.rank_units(groups, P.PruneConfig(importance=importance), model, prepared, 8, torch.device("cpu"))
    model, _ = adapter.remove_units(model, groups, [P.keep_units(s, 0.5) for s in scores])
    return model


def macs(model, task: str) -> int:
    return P.count_macs(model, SEQ, token_head=not get_task(task).classifies)


@pytest.mark.parametrize("task", TASKS)
def test_mac_count_matches_torch_flop_counter(tmp_path, task):
    prepared, model = tiny_model(task, tmp_path)
    batch = example(task, prepared)
    assert macs(model, task) == flop_counter_macs(model, batch)
    model = prune_half(model, task, prepared, "l2")
    assert macs(model.eval(), task) == flop_counter_macs(model, batch)


def _l1(t: torch.Tensor, dim: int, block: int) -> torch.Tensor:
    return t.abs().movedim(dim, 0).reshape(t.shape[dim] // block, -1).sum(1)


def zero_units(model, task: str, removed: dict) -> None:
    """Silence units in the original model: heads by zeroing their q/k/v rows, FFN neurons by zeroing their input
    row and bias (gelu(0) = 0), CNN channels by zeroing the BatchNorm scale and shift that make and read them."""
    with torch.no_grad():
        if task == "image-classification":
            blocks = list(model.blocks)
            for i, chans in removed.items():
                bns = [model.stem[1] if i == 0 else blocks[i - 1].pointwise[1]]
                if i < len(blocks):
                    bns.append(blocks[i].depthwise[1])
                for bn in bns:
                    bn.weight[chans] = 0
                    bn.bias[chans] = 0
            return
        layers = {"text-classification": lambda: model.bert.encoder.layer, "language-modeling": lambda: model.transformer.h,
                  "seq2seq": lambda: list(model.model.encoder.layers) + list(model.model.decoder.layers)}[task]()
        for l, layer in enumerate(layers):
            if task == "text-classification":
                s, d = layer.attention.self, layer.attention.self.attention_head_size
                for h in removed["heads"][l]:
                    for lin in (s.query, s.key, s.value):
                        lin.weight[h * d:(h + 1) * d] = 0
                        lin.bias[h * d:(h + 1) * d] = 0
                up = layer.intermediate.dense
                up.weight[removed["ffn"][l]] = 0
                up.bias[removed["ffn"][l]] = 0
            elif task == "language-modeling":
                a, d = layer.attn, layer.attn.head_dim
                for h in removed["heads"][l]:
                    for off in (0, a.split_size, 2 * a.split_size):
                        a.c_attn.weight[:, off + h * d: off + (h + 1) * d] = 0
                        a.c_attn.bias[off + h * d: off + (h + 1) * d] = 0
                layer.mlp.c_fc.weight[:, removed["ffn"][l]] = 0
                layer.mlp.c_fc.bias[removed["ffn"][l]] = 0
            else:
                layer.fc1.weight[removed["ffn"][l]] = 0
                layer.fc1.bias[removed["ffn"][l]] = 0


def expected_removals(model, task: str, fraction: float) -> dict:
    """Which units an L1 ranking removes, computed here from the weights."""
    def lowest(score: torch.Tensor) -> list[int]:
        return sorted(score.argsort()[: round(fraction * len(score))].tolist())

    if task == "image-classification":
        blocks = list(model.blocks)
        convs = [model.stem[0]] + [b.pointwise[0] for b in blocks]
        return {i: lowest(_l1(c.weight.detach(), 0, 1)) for i, c in enumerate(convs)}
    out = {"heads": [], "ffn": []}
    if task == "text-classification":
        for layer in model.bert.encoder.layer:
            s, d = layer.attention.self, layer.attention.self.attention_head_size
            score = sum(_l1(x.detach(), 0, d) for lin in (s.query, s.key, s.value) for x in (lin.weight, lin.bias))
            out["heads"].append(lowest(score + _l1(layer.attention.output.dense.weight.detach(), 1, d)))
            up, down = layer.intermediate.dense, layer.output.dense
            out["ffn"].append(lowest(_l1(up.weight.detach(), 0, 1) + up.bias.detach().abs() + _l1(down.weight.detach(), 1, 1)))
    elif task == "language-modeling":
        for layer in model.transformer.h:
            a, d, w = layer.attn, layer.attn.head_dim, layer.attn.c_attn.weight.detach()
            b = layer.attn.c_attn.bias.detach()
            score = sum(_l1(w[:, o:o + a.split_size], 1, d) + _l1(b[o:o + a.split_size], 0, d)
                        for o in (0, a.split_size, 2 * a.split_size))
            # GPT-2 keeps its heads: its config cannot say fewer heads, which the KV-cache export needs
            out["heads"].append([])
            up, down = layer.mlp.c_fc, layer.mlp.c_proj
            out["ffn"].append(lowest(_l1(up.weight.detach(), 1, 1) + up.bias.detach().abs() + _l1(down.weight.detach(), 0, 1)))
    else:
        for layer in list(model.model.encoder.layers) + list(model.model.decoder.layers):
            out["ffn"].append(lowest(_l1(layer.fc1.weight.detach(), 0, 1) + layer.fc1.bias.detach().abs()
                                     + _l1(layer.fc2.weight.detach(), 1, 1)))
    return out


@pytest.mark.parametrize("task", TASKS)
def test_structured_removal_computes_what_the_silenced_original_computes(tmp_path, task):
    prepared, model = tiny_model(task, tmp_path)
    batch = example(task, prepared)
    removed = expected_removals(model, task, 0.5)
    silenced = copy.deepcopy(model)
    zero_units(silenced, task, removed)
    model = prune_half(model, task, prepared, "l1")
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**batch).logits, silenced(**batch).logits, rtol=1e-4, atol=1e-5)


STRUCTURED = [("text-classification", "l1"), ("language-modeling", "taylor"), ("seq2seq", "l2"),
              ("image-classification", "taylor")]


@pytest.mark.parametrize("task,importance", STRUCTURED)
def test_structured_prune_step_shrinks_the_dense_model(tmp_path, task, importance):
    ctx, base = kit.make_base(tmp_path, task, train_steps=10, heads=4)
    v = kit.run_step(ctx, base, {"method": "prune", "kind": "structured", "sparsity": 0.5, "importance": importance,
                                 "max_steps": 3})
    teacher = get_task(task).load(base.model_dir).eval()
    model = get_task(task).load(v.model_dir).eval()  # from_pretrained rebuilds the pruned shapes
    batch = example(task, ctx.prepare(v.model_dir))
    seq = ctx.recipe.eval.latency.seq_len
    big = {k: torch.randint(3, 100, (1, seq)) if k != "attention_mask" else torch.ones(1, seq, dtype=torch.long)
           for k in batch} if task != "image-classification" else batch
    assert v.info["params_after"] == sum(p.numel() for p in model.parameters())
    assert v.info["macs_before"] == flop_counter_macs(teacher, big)
    assert v.info["macs_after"] == flop_counter_macs(model, big)
    if task == "image-classification":
        assert model.config.widths == [8, 16, 32]  # half of 16, 32, 64 channels
        return
    # inside the layers everything is linear in the heads and FFN width: exactly half the MACs there
    head = {"text-classification": 32 * 32 + 32 * 2, "language-modeling": seq * 32 * model.config.vocab_size,
            "seq2seq": seq * 32 * model.config.vocab_size}[task]
    if task == "seq2seq":  # BART keeps its heads: only the 4 FFNs (2 x T x d x ffn MACs each) lose half
        assert v.info["macs_before"] - v.info["macs_after"] == 4 * 2 * seq * 32 * 64
    elif task == "language-modeling":  # GPT-2 keeps its heads (KV-cache export): its 2 FFNs lose half
        assert v.info["macs_before"] - v.info["macs_after"] == 2 * 2 * seq * 32 * 64
    else:
        assert v.info["macs_after"] - head == (v.info["macs_before"] - head) // 2
    if task == "text-classification":
        assert model.config.intermediate_size == 64 and all(len(h) == 2 for h in model.config.pruned_heads.values())
    elif task == "language-modeling":
        assert model.config.n_inner == 64 and not model.config.pruned_heads and v.info["notes"]
    else:
        assert model.config.encoder_ffn_dim == model.config.decoder_ffn_dim == 64 and v.info["notes"]
    assert sorted(p.name for p in (v.path / "checkpoints").glob("step-*")) == ["step-000003"]


def test_pruned_bert_exports_to_onnx_and_matches(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from toolkit.export.onnx import export_onnx

    ctx, base = kit.make_base(tmp_path, "text-classification", train_steps=10, heads=4)
    v = kit.run_step(ctx, base, {"method": "prune", "kind": "structured", "sparsity": 0.5, "max_steps": 2})
    path = export_onnx(v.model_dir, tmp_path / "onnx", get_task("text-classification")).files[0]
    model = get_task("text-classification").load(v.model_dir).eval()
    prepared = ctx.prepare(v.model_dir)
    batch = prepared.collate(prepared.eval_set[:4])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feed = {k: batch[k].numpy() for k in ("input_ids", "attention_mask")}
    if "token_type_ids" in names:
        feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.numpy()
    np.testing.assert_allclose(session.run(None, feed)[0], want, atol=1e-4)


def test_pruned_gpt2_exports_with_its_kv_cache_and_verifies(tmp_path):
    """GPT-2's config cannot say fewer heads; the KV-cache export builds its past from the config, so the heads
    stay (said in a note) and the pruned model exports and verifies (issue 12: it used to fail to export)."""
    from toolkit.export.onnx import export_onnx
    from toolkit.export.verify import verify

    ctx, base = kit.make_base(tmp_path, "language-modeling", train_steps=10, heads=4)
    v = kit.run_step(ctx, base, {"method": "prune", "kind": "structured", "sparsity": 0.5, "max_steps": 2})
    assert any("heads are kept" in n for n in v.info["notes"])
    result = export_onnx(v.model_dir, tmp_path / "onnx", get_task("language-modeling"))
    assert result.extra["kv_cache"]
    prepared = ctx.prepare(v.model_dir)
    samples = [{k: x.numpy() for k, x in prepared.collate(prepared.eval_set[:4]).items()}]
    checks = verify(result, v.model_dir, samples)
    assert checks and all(c["verified"] for c in checks), checks


def test_mac_count_of_a_model_without_known_structure_is_none():
    """Unstructured pruning needs no architecture knowledge: no MAC count is no refusal (issue 12)."""
    assert P.count_macs(torch.nn.Sequential(torch.nn.Linear(4, 4)), 8, token_head=False) is None


@pytest.mark.parametrize("task", ["text-classification", "image-classification"])
def test_unstructured_sparsity_and_schedule(tmp_path, task):
    ctx, base = kit.make_base(tmp_path, task, train_steps=10)
    v = kit.run_step(ctx, base, {"method": "prune", "kind": "unstructured", "sparsity": 0.6, "max_steps": 12,
                                 "prune_every": 2})
    model = get_task(task).load(v.model_dir)
    weights = {n: m.weight for n, m in model.named_modules()
               if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and not n.startswith("classifier")}
    zeros = {n: int((w == 0).sum()) for n, w in weights.items()}
    size = sum(w.numel() for w in weights.values())
    assert sum(zeros.values()) == round(0.6 * size)  # exactly the asked global sparsity
    assert v.info["pruned_weights"] == size
    for n, w in weights.items():
        assert v.info["sparsity_per_layer"][n] == pytest.approx(zeros[n] / w.numel(), abs=1e-6)
    assert len(set(v.info["sparsity_per_layer"].values())) > 1  # global, not layer by layer
    assert int((model.classifier.weight == 0).sum()) == 0  # the output head is left dense
    # Zhu & Gupta: s_t = s_f * (1 - (1 - t / t_end)^3), updated every 2 steps, t_end = 0.75 * 12 = 9
    trace = v.info["schedule"]["trace"]
    assert [t for t, _ in trace][:4] == [2, 4, 6, 8]
    for t, s in trace:
        assert s == pytest.approx(round(0.6 * (1 - (1 - min(t, 9) / 9) ** 3) * size) / size, abs=1e-9)
    assert v.info["gzip_bytes_after"] < 0.8 * v.info["gzip_bytes_before"]
    assert "no speed-up" in v.info["note"] and v.info["macs_after"] == v.info["macs_before"]


# ---- bad input --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture,message", [
    ("prune_sparsity_one.toml", r"sparsity = 1.0 must be in \[0, 1\)"),
    ("prune_sparsity_negative.toml", r"sparsity = -0.2 must be in \[0, 1\)"),
    ("prune_unknown_kind.toml", "did you mean 'structured'"),
    ("prune_unknown_importance.toml", "did you mean 'taylor'"),
])
def test_bad_prune_keys_are_one_line_errors(fixture, message):
    with pytest.raises(UserError, match=message) as e:
        load_recipe(FIXTURES / fixture)
    assert "\n" not in str(e.value) and fixture in str(e.value)


def test_pruning_an_onnx_only_variant_is_a_user_error(tmp_path):
    ctx, _ = kit.make_base(tmp_path, "text-classification", train_steps=0)
    recipe = load_recipe(FIXTURES / "prune_structured.toml")
    (step,) = parse_steps(recipe.compress, recipe.source_path)
    onnx_only = Variant("int8", "base", "quantize", ctx.run.variant("int8"), onnx=ctx.run.variant("int8") / "model.onnx")
    with pytest.raises(UserError, match="needs a PyTorch model, but variant 'int8' is ONNX only"):
        handler_for(step)(step, onnx_only, ctx)

"""LoRA (peft): what trains, what a checkpoint holds, the verified merge, bad [train.lora] tables, and the
real thing — MiniLM on SST-2 — trained, merged, checked against its adapter and exported to ONNX."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from toolkit.config import load_recipe, recipe_from_dict
from toolkit.errors import CheckFailed, UserError
from toolkit.events import Emitter, read_events
from toolkit.rundir import RunDir
from toolkit.train import checkpoint as ckpt_io
from toolkit.train import lora
from toolkit.train.stage import run_train

peft = pytest.importorskip("peft")

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "train"


def _recipe(task: str, **lora_keys):
    return recipe_from_dict({"task": task, "train": {"lora": {"r": 4, **lora_keys}}}, "t.toml")


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64, num_labels=2))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32))


def _bart():
    from transformers import BartConfig, BartForConditionalGeneration

    return BartForConditionalGeneration(BartConfig(vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=1,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32))


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("task, build, targets, head", [
    ("text-classification", _bert, ["query", "value"], ["classifier"]),
    ("language-modeling", _gpt2, ["c_attn"], []),
    ("seq2seq", _bart, ["q_proj", "v_proj"], []),
])
def test_default_targets_and_only_adapters_train(task, build, targets, head):
    model = build()
    total = sum(p.numel() for p in model.parameters())
    wrapped, setup = lora.apply_lora(_recipe(task), model)
    assert sorted(setup.target_modules) == sorted(targets) and setup.modules_to_save == head
    names = _trainable(wrapped)
    assert names and all(".lora_" in n or any(f".{h}." in n for h in head) for n in names), names
    assert setup.adapted_modules == sum(1 for n in names if ".lora_A." in n)
    # peft's count, checked by hand: trainable parameters over the model's (base + adapters + head copy).
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert setup.trainable_params == trainable and setup.total_params >= total
    assert 0 < setup.trainable_fraction < 0.25 and setup.base["sha256"]


def _train_a_little(wrapped, steps: int = 5) -> None:
    """A few real optimizer steps on random sentences, so the adapters are no longer zero."""
    opt = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(1)
    wrapped.train()
    for _ in range(steps):
        x = torch.randint(0, 64, (4, 8), generator=g)
        loss = wrapped(input_ids=x, attention_mask=torch.ones_like(x), labels=torch.tensor([0, 1, 0, 1])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def _samples(n: int = 6) -> list[dict]:
    g = torch.Generator().manual_seed(2)
    return [{"input_ids": torch.randint(0, 64, (7,), generator=g).tolist(), "labels": i % 2} for i in range(n)]


def _collate(items):
    ids = torch.tensor([it["input_ids"] for it in items])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([it["labels"] for it in items])}


def test_merge_gives_the_adapter_models_outputs():
    from transformers import BertForSequenceClassification

    wrapped, _ = lora.apply_lora(_recipe("text-classification"), _bert())
    _train_a_little(wrapped)
    wrapped.eval()
    with torch.no_grad():
        expected = wrapped(**_collate(_samples())).logits
    merged, check = lora.merge_and_verify(wrapped, _samples(), _collate)
    assert type(merged) is BertForSequenceClassification  # an ordinary model: no peft layers left
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(**_collate(_samples())).logits, expected, atol=1e-5, rtol=1e-5)
    assert check["changed_modules"] == check["adapted_modules"] == 4 and check["max_abs_diff"] < 1e-5


def test_a_merge_that_changes_nothing_is_an_error():
    wrapped, _ = lora.apply_lora(_recipe("text-classification"), _bert())  # B = 0: the adapters are zero
    with pytest.raises(CheckFailed, match="changed none of the 4 adapted weights"):
        lora.merge_and_verify(wrapped, _samples(), _collate)


def test_a_merge_that_changes_outputs_is_caught(monkeypatch):
    wrapped, _ = lora.apply_lora(_recipe("text-classification"), _bert())
    _train_a_little(wrapped)
    lora_model = type(wrapped.base_model)  # PeftModel hands merge_and_unload to its LoraModel
    real = lora_model.merge_and_unload

    def broken(self, *a, **kw):
        model = real(self, *a, **kw)
        with torch.no_grad():
            model.bert.encoder.layer[0].attention.self.value.weight.mul_(2.0)  # a wrong merge
        return model

    monkeypatch.setattr(lora_model, "merge_and_unload", broken)
    with pytest.raises(CheckFailed, match="outputs differ from the adapter model's"):
        lora.merge_and_verify(wrapped, _samples(), _collate)


@pytest.mark.parametrize("fixture, match", [
    ("lora_bad_r.toml", r"train\.lora\.r = -1: must be >= 0"),
    ("lora_bad_alpha.toml", r"train\.lora\.alpha = 0\.0: must be a positive number"),
    ("lora_bad_dropout.toml", r"train\.lora\.dropout = 1\.5: must be in \[0, 1\)"),
    ("lora_not_training.toml", r"train\.lora\.r = 8 but \[train\] enabled = false"),
])
def test_bad_lora_values_are_user_errors(fixture, match):
    recipe = load_recipe(FIX / fixture)
    with pytest.raises(UserError, match=match) as e:
        lora.check_config(recipe)
    assert fixture in str(e.value)


@pytest.mark.parametrize("fixture, match, hint", [
    ("lora_unknown_target.toml", r"train\.lora\.target_modules: 'attention_q' matches no module", "query"),
    ("lora_unknown_head.toml", r"train\.lora\.modules_to_save: 'head' matches no module", "classifier"),
])
def test_modules_that_do_not_exist_are_user_errors(fixture, match, hint):
    recipe = load_recipe(FIX / fixture)
    with pytest.raises(UserError, match=match) as e:
        lora.apply_lora(recipe, _bert())
    assert fixture in str(e.value) and hint in str(e.value)  # the message lists real module names


def test_unknown_lora_key_names_the_table():
    with pytest.raises(UserError, match=r"unknown key 'rank' in \[train\.lora\]; valid: alpha, dropout, modules_to_save, r,"):
        load_recipe(FIX / "lora_unknown_key.toml")


def _run(out: Path, resume: bool = False):
    recipe = load_recipe(FIX / "lora_tiny.toml")
    run = RunDir(out)
    run.path.mkdir(parents=True, exist_ok=True)
    emitter = Emitter(run.events, recipe.name)
    try:
        return run_train(recipe, run, emitter.for_stage("train"), resume=resume), run
    finally:
        emitter.close()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("lora-tiny"))[1]


def test_lora_run_writes_adapter_merged_model_and_small_checkpoints(tiny_run):
    run = tiny_run
    adapter = run.train / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["query", "value"] and config["r"] == 4
    assert config["modules_to_save"] == ["classifier"]
    adapter_weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert adapter_weights and all("lora_" in k or "classifier" in k for k in adapter_weights)
    # train/final is an ordinary model (no adapter layers) that the task loads like any other.
    final = load_file(str(run.final / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k or "modules_to_save" in k for k in final)
    assert json.loads((run.final / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    # Checkpoints hold what trains plus buffers, not the frozen base.
    ckpt = torch.load(run.checkpoints / "step-000008" / "model.pt", weights_only=True)
    assert ckpt and all(".lora_" in k or "modules_to_save" in k or "position_ids" in k or "token_type_ids" in k
                        for k in ckpt), sorted(ckpt)
    assert sum(t.numel() for t in ckpt.values()) < 0.25 * sum(t.numel() for t in final.values())
    state = torch.load(run.checkpoints / "step-000008" / "state.pt", weights_only=True)
    manifest = json.loads(run.manifest.read_text())
    m = manifest["lora"]
    assert state["meta"]["base"] == m["base"] and m["base"]["path"] == "builtin:bert-tiny" and len(m["base"]["sha256"]) == 64
    assert m["trainable_fraction"] == pytest.approx(m["trainable_params"] / m["total_params"])
    assert m["merge"]["changed_modules"] == m["adapted_modules"] == 4 and m["merge"]["samples"] == 12
    assert m["merge"]["max_abs_diff"] <= m["merge"]["tolerance"]
    assert {"train/adapter", "train/final", "base"} <= {a["name"] for a in manifest["artifacts"]}
    events = read_events(run.events)
    [frac] = [e["values"]["trainable_fraction"] for e in events
              if e["kind"] == "metric" and "trainable_fraction" in e["values"]]
    assert frac == m["trainable_fraction"]
    assert any("LoRA r=4 on query, value" in e.get("message", "") for e in events)


def test_lora_resume_is_bit_identical(tiny_run, tmp_path):
    import shutil

    shutil.copytree(tiny_run.path, tmp_path / "b")
    for c in ckpt_io.list_checkpoints(tmp_path / "b/train/checkpoints"):
        if c.step > 4:
            shutil.rmtree(c.path)
    shutil.rmtree(tmp_path / "b/train/final")
    result, run = _run(tmp_path / "b", resume=True)
    assert result.state.step == 8
    again, reference = load_file(str(run.final / "model.safetensors")), load_file(str(tiny_run.final / "model.safetensors"))
    for name, tensor in reference.items():
        assert again[name].equal(tensor), name


@pytest.mark.slow
def test_lora_minilm_sst2_trains_merges_and_exports(shared_data, minilm_dir, tmp_path):
    """MiniLM + LoRA on 3,600 SST-2 training phrases (2 epochs of batch 16): < 5 % of the weights train, > 80 %
    accuracy on the 872 test sentences (84 % measured), the merged model gives the adapter's outputs and
    exports to ONNX like any other model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from toolkit.events import null_emitter
    from toolkit.export.onnx import export_onnx
    from toolkit.export.verify import raise_if_failed, verify

    sst2 = shared_data / "sst2"
    recipe = recipe_from_dict({
        "name": "lora-sst2", "task": "text-classification", "seed": 0,
        "data": {"train": str(sst2 / "train.tsv"), "eval": str(sst2 / "test.tsv"), "text_column": "sentence",
                 "label_column": "label", "limit": 4000, "max_length": 64},
        "model": {"source": str(minilm_dir)},
        "train": {"epochs": 2, "batch_size": 16, "lr": 2e-3, "warmup": 0.1, "checkpoint_every": 0,
                  "log_every": 20, "lora": {"r": 8, "alpha": 16}},
    }, "lora-sst2.toml")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run_train(recipe, run, null_emitter("train"))
    m = json.loads(run.manifest.read_text())["lora"]
    assert m["trainable_fraction"] < 0.05
    assert m["base"]["path"] == str(minilm_dir.resolve())

    # Accuracy on the held-out test set, computed here from train/final with plain transformers.
    with open(sst2 / "test.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    labels = json.loads((run.final / "labels.json").read_text())
    tok = AutoTokenizer.from_pretrained(run.final)
    merged = AutoModelForSequenceClassification.from_pretrained(run.final).eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(rows), 64):
            chunk = rows[i:i + 64]
            enc = tok([r["sentence"] for r in chunk], padding=True, truncation=True, max_length=64, return_tensors="pt")
            pred = merged(**enc).logits.argmax(-1)
            correct += sum(labels[int(p)] == r["label"] for p, r in zip(pred, chunk))
    accuracy = correct / len(rows)
    print(f"LoRA MiniLM: test accuracy {accuracy:.3f} on {len(rows)} sentences, trainable {m['trainable_fraction']:.2%}")
    assert len(rows) > 800 and accuracy > 0.80, accuracy

    # The merged model equals base + adapter, rebuilt independently from train/adapter.
    from peft import PeftModel

    base = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    adapted = PeftModel.from_pretrained(base, run.train / "adapter").eval()
    enc = tok([r["sentence"] for r in rows[:48]], padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**enc).logits, adapted(**enc).logits, atol=1e-4, rtol=1e-4)

    # Export like any other model: optimum ONNX, verified in ONNX Runtime on real sentences.
    result = export_onnx(run.final, tmp_path / "onnx", "text-classification")
    samples = [dict(tok([r["sentence"] for r in rows[i:i + 4]], padding=True, return_tensors="np")) for i in (0, 4)]
    checks = verify(result, run.final, samples)
    raise_if_failed(checks)
    assert checks and all(c["verified"] for c in checks)

"""The adapter of Hugging Face CNNs (toolkit/arch/convnet.py) on tiny random models of seven families, two of them
(MobileNetV1, RegNet) named nowhere in the toolkit.

Independent checks: channel removal computes exactly what the original computes with those channels silenced (the
weights that read them zeroed), where no normalisation mixes channels; a pruned model saved to a folder comes back
from ``from_pretrained`` with the same logits; students and refusals.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers as T

import vision_families as V
from toolkit.arch import adapter_for
from toolkit.arch.cnn import EdgeCNNAdapter
from toolkit.arch.convnet import ConvNetAdapter
from toolkit.arch.transformer import TransformerAdapter
from toolkit.errors import UserError
from toolkit.models.reshaped import RESHAPED, save_model


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def half(groups, seed: int = 0) -> list[list[int]]:
    """A random half of each group's channels (not the ranking's choice: the surgery must hold for any)."""
    gen = torch.Generator().manual_seed(seed)
    return [sorted(torch.randperm(g.count, generator=gen)[: max(1, g.count // 2)].tolist()) for g in groups]


def mixes_channels(model, group) -> bool:
    """The group's channels pass through a norm over channels (LayerNorm, GroupNorm), whose statistics change when
    a channel goes: removal is then not the same as silencing."""
    norms = {id(m.weight) for m in model.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))}
    return any(id(t) in norms for t, *_ in group.parts)


def test_each_family_gets_the_adapter_that_reads_it():
    for name in V.CNNS:
        assert isinstance(adapter_for(V.build(name)), ConvNetAdapter), name
    for name in V.TRANSFORMERS:  # one patch-embedding conv: a transformer
        assert isinstance(adapter_for(V.build(name)), TransformerAdapter), name
    from toolkit.models.cnn import EdgeCNNConfig, EdgeCNNForImageClassification

    assert isinstance(adapter_for(EdgeCNNForImageClassification(EdgeCNNConfig())), EdgeCNNAdapter)


@pytest.mark.parametrize("name", V.CNNS)
def test_channel_removal_computes_what_the_silenced_original_computes(name):
    model = V.build(name, spread=True)
    adapter = adapter_for(model)
    groups = adapter.prune_groups(model, ["heads", "ffn"], False, [])
    keep = [k if not mixes_channels(model, g) else list(range(g.count)) for g, k in zip(groups, half(groups))]
    assert sum(len(k) < g.count for g, k in zip(groups, keep)) >= 2, "too few groups to test"
    silenced = copy.deepcopy(model)
    originals = {id(p): q for p, q in zip(model.parameters(), silenced.parameters())}
    with torch.no_grad():
        for g, kept in zip(groups, keep):
            for t, dim, start, block in g.parts:
                if dim != 1 or t.dim() < 2:
                    continue  # only the weights that read the channels (a conv's / linear's input columns)
                copy_t = originals[id(t)]
                for u in set(range(g.count)) - set(kept):
                    copy_t.narrow(dim, start + u * block, block).zero_()
    x = V.images(3, seed=1)
    before = params(model)
    pruned, facts = adapter.remove_units(model, groups, keep)
    assert params(pruned) < before and facts["channels"] == [len(k) for k in keep]
    with torch.no_grad():
        want = silenced(pixel_values=x).logits
        assert float(want.std(0).mean()) > 1e-4  # the output depends on the image, not only on the biases
        torch.testing.assert_close(pruned(pixel_values=x).logits, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", V.CNNS)
def test_a_pruned_model_reloads_from_its_folder(tmp_path, name):
    model = V.build(name, spread=True)
    adapter = adapter_for(model)
    macs, size = adapter.count_macs(model, 0, False), params(model)
    notes: list[str] = []
    groups = adapter.prune_groups(model, [], False, notes)
    pruned, _ = adapter.remove_units(model, groups, half(groups))
    assert params(pruned) < 0.75 * size and adapter.count_macs(pruned, 0, False) < 0.75 * macs
    record = save_model(pruned, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == RESHAPED and saved["reshaped_from"] == name
    assert saved["reshaped_modules"] == json.loads(json.dumps(record)) and record
    back = T.AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(back) is type(pruned) and back.config.model_type == pruned.config.model_type
    assert params(back) == params(pruned)
    x = V.images(2, seed=3)
    with torch.no_grad():
        want = pruned.eval()(pixel_values=x).logits
        assert not torch.allclose(want[0], want[1])
        torch.testing.assert_close(back(pixel_values=x).logits, want, rtol=0, atol=0)
    if name == "regnet":
        assert any("grouped convolutions" in n for n in notes)


def test_a_reloaded_pruned_model_can_be_pruned_again(tmp_path):
    model = V.build("mobilenet_v2", spread=True)
    adapter = adapter_for(model)
    for round_ in ("once", "twice"):
        groups = adapter.prune_groups(model, [], False, [])
        model, _ = adapter.remove_units(model, groups, half(groups, seed=len(round_)))
        save_model(model, tmp_path / round_)
        model = T.AutoModelForImageClassification.from_pretrained(tmp_path / round_)
    twice = params(model)
    assert twice < 0.5 * params(V.build("mobilenet_v2"))
    assert params(T.AutoModelForImageClassification.from_pretrained(tmp_path / "twice")) == twice


def test_an_unpruned_model_saves_as_its_own_family(tmp_path):
    assert save_model(V.build("resnet"), tmp_path) == {}
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "resnet"


def test_weights_that_do_not_fit_the_record_are_refused(tmp_path):
    model = V.build("convnext", spread=True)
    adapter = adapter_for(model)
    groups = adapter.prune_groups(model, [], False, [])
    save_model(adapter.remove_units(model, groups, half(groups))[0], tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    name, entry = next(iter(cfg["reshaped_modules"].items()))
    key, dims = next(iter(entry["shapes"].items()))
    entry["shapes"][key] = [d + 1 if d else d for d in dims]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match=rf"{name}\.{key} is .* in the weights but .* in the model"):
        T.AutoModelForImageClassification.from_pretrained(tmp_path)


# ---- students ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet", "convnext", "mobilevit"])
def test_narrow_student_of_a_family_with_stage_widths(name):
    teacher = V.build(name)
    adapter = adapter_for(teacher)
    widths = adapter.default_student_widths(teacher)
    assert widths and all(w < t for w, t in zip(widths, teacher.config.hidden_sizes))
    student = adapter.narrow_student(teacher, widths, seed=0)
    assert type(student) is type(teacher) and student.config.hidden_sizes == widths
    assert params(student) < params(teacher)
    assert student(pixel_values=V.images()).logits.shape == (2, 3)
    with pytest.raises(UserError, match="give one width per stage"):
        adapter.narrow_student(teacher, [4], seed=0)


@pytest.mark.parametrize("name,key", [("mobilenet_v2", "depth_multiplier"), ("efficientnet", "width_coefficient")])
def test_narrow_student_of_a_family_scaled_by_one_multiplier(name, key):
    teacher = V.build(name)
    adapter = adapter_for(teacher)
    assert adapter.default_student_widths(teacher) == []
    student = adapter.narrow_student(teacher, [], seed=0)
    assert getattr(student.config, key) == getattr(teacher.config, key) / 2
    assert params(student) < params(teacher) and student(pixel_values=V.images()).logits.shape == (2, 3)
    with pytest.raises(UserError, match=rf"widths = \[8, 16\] does not apply to '{name}' models .*: its config has "
                                        rf"no per-stage widths \({key} scales every width\); leave widths out"):
        adapter.narrow_student(teacher, [8, 16], seed=0)


@pytest.mark.parametrize("name", ["resnet", "convnext"])
def test_layer_dropping_keeps_the_chosen_blocks_of_each_stage(name):
    teacher = V.build(name, spread=True)
    adapter = adapter_for(teacher)
    assert [len(s.layers) for s in adapter.stacks(teacher)] == teacher.config.depths == [1, 2]
    same = adapter.drop_layers(teacher, [0, 1], "[[compress]] d").eval()
    x = V.images(2)
    with torch.no_grad():  # every block kept: the very same function
        torch.testing.assert_close(same(pixel_values=x).logits, teacher(pixel_values=x).logits, rtol=0, atol=0)
    student = adapter.drop_layers(teacher, [0], "[[compress]] d")
    assert student.config.depths == [1, 1] and params(student) < params(teacher)
    weights = teacher.state_dict()
    for k, t in student.state_dict().items():  # the kept blocks keep their places: copied as they were
        assert torch.equal(t, weights[k]), k
    gone = [k for k in weights if ".stages.1.layers.1." in k]
    assert gone and not any(k in student.state_dict() for k in gone)
    with pytest.raises(UserError, match=r"layers = \[1\]: keep block 0 of each stage"):
        adapter.drop_layers(teacher, [1], "[[compress]] d")


def test_refusals_name_the_family_what_it_lacks_and_what_works():
    mnv2 = V.build("mobilenet_v2")
    adapter = adapter_for(mnv2)
    with pytest.raises(UserError) as e:
        adapter.drop_layers(mnv2, [0], "[[compress]] d")
    assert str(e.value) == ("layer dropping does not apply to 'mobilenet_v2' models (MobileNetV2ForImageClassification): "
                            "its config has no per-stage block counts (depths); leave layers out for a fresh, narrower "
                            "student (or set widths)")
    with pytest.raises(UserError, match="CNN students are set with widths"):
        adapter.fresh_student(mnv2, 2, 0, 0, "[[compress]] d", 0)
    with pytest.raises(UserError) as e:
        adapter.lora_targets(mnv2)
    assert str(e.value).startswith("LoRA by default does not apply to 'mobilenet_v2' models")
    assert str(e.value).endswith("train it fully (leave [train.lora] out) or name its plain convolutions or linear "
                                 "layers in train.lora.target_modules")


def test_named_plain_convolutions_do_take_lora_adapters():
    peft = pytest.importorskip("peft")

    resnet = V.build("resnet")
    wrapped = peft.get_peft_model(resnet, peft.LoraConfig(r=2, target_modules=["convolution"],
                                                          modules_to_save=["classifier"]))
    assert sum(hasattr(m, "lora_A") for m in wrapped.modules()) == 11  # every conv of the tiny ResNet
    assert wrapped(pixel_values=V.images()).logits.shape == (2, 3)

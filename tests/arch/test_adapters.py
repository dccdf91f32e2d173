"""The architecture adapters on tiny random models of many families: the structure they find, and surgery that
computes exactly what the original computes with the removed units silenced.

The families below are not listed anywhere in ``toolkit/arch``: the transformer adapter finds their layers,
attention and FFN by inspecting the modules. "Silenced" means the removed heads' columns of the attention output
projection (and the removed neurons' columns of the FFN's down projection) set to zero in the original model: a
head or neuron that contributes nothing. Removing it must then change nothing at all.
"""
from __future__ import annotations

import copy

import pytest
import torch
import transformers as T
from torch.utils.flop_counter import FlopCounterMode

from toolkit.arch import adapter_for
from toolkit.arch.transformer import check_config
from toolkit.errors import UserError

SEQ = 12


def _families() -> dict:
    small = dict(vocab_size=96)
    return {
        "bert": (lambda: T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, **small), T.AutoModelForSequenceClassification, False),
        "distilbert": (lambda: T.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **small),
                       T.AutoModelForSequenceClassification, False),
        "electra": (lambda: T.ElectraConfig(hidden_size=32, embedding_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, intermediate_size=64, **small),
                    T.AutoModelForSequenceClassification, False),
        "gpt2": (lambda: T.GPT2Config(n_embd=32, n_layer=2, n_head=4, **small), T.AutoModelForCausalLM, True),
        "llama": (lambda: T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=64, **small),
                  T.AutoModelForCausalLM, True),
        "qwen2": (lambda: T.Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=64, **small),
                  T.AutoModelForCausalLM, True),
        "gemma": (lambda: T.GemmaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=1, head_dim=8, intermediate_size=64, **small),
                  T.AutoModelForCausalLM, True),
        "phi3": (lambda: T.Phi3Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, pad_token_id=0, **small),
                 T.AutoModelForCausalLM, True),
        "bart": (lambda: T.BartConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                      decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, **small),
                 T.AutoModelForSeq2SeqLM, True),
        "t5": (lambda: T.T5Config(d_model=32, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=8, d_ff=64,
                                  **small), T.AutoModelForSeq2SeqLM, True),
        "vit": (lambda: T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, image_size=16, patch_size=8),
                T.AutoModelForImageClassification, False),
        # families named nowhere in the toolkit whose layers look like known ones
        "roberta": (lambda: T.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64, **small), T.AutoModelForSequenceClassification, False),
        "xlm-roberta": (lambda: T.XLMRobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                   intermediate_size=64, **small),
                        T.AutoModelForSequenceClassification, False),
        "deberta-v2": (lambda: T.DebertaV2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                 intermediate_size=64, **small),
                       T.AutoModelForSequenceClassification, False),
        "mistral": (lambda: T.MistralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=64, **small),
                    T.AutoModelForCausalLM, True),
        "opt": (lambda: T.OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                                    word_embed_proj_dim=32, **small), T.AutoModelForCausalLM, True),
        "gpt_neox": (lambda: T.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=64, **small), T.AutoModelForCausalLM, True),
        "marian": (lambda: T.MarianConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                          decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                          decoder_vocab_size=96, pad_token_id=0, **small),
                   T.AutoModelForSeq2SeqLM, True),
        "mbart": (lambda: T.MBartConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, **small),
                  T.AutoModelForSeq2SeqLM, True),
    }


FAMILIES = _families()


def build(name: str):
    make, auto, kv_cache = FAMILIES[name]
    torch.manual_seed(0)
    model = auto.from_config(make(), attn_implementation="eager").eval()
    with torch.no_grad():  # random weights large enough that every unit matters to the output
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model, kv_cache


def inputs(model) -> dict:
    if model.main_input_name == "pixel_values":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))}
    ids = torch.randint(4, 90, (2, SEQ), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if model.config.is_encoder_decoder:
        batch["decoder_input_ids"] = ids[:, :SEQ]
    return batch


def silence(model, groups, keep) -> None:
    """Zero the last part of each group (the output / down projection's input columns) for the removed units."""
    with torch.no_grad():
        for g, kept in zip(groups, keep):
            tensor, dim, start, block = g.parts[-1]
            for u in range(g.count):
                if u not in kept:
                    tensor.narrow(dim, start + u * block, block).zero_()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_stacks_and_count_keys_are_found(name):
    model, _ = build(name)
    stacks = adapter_for(model).stacks(model)
    assert stacks and all(getattr(model.config, s.count_key) == len(s.layers) for s in stacks)
    assert len(stacks) == (2 if model.config.is_encoder_decoder else 1)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_removed_units_change_nothing_but_the_silenced_units(name):
    model, kv_cache = build(name)
    adapter = adapter_for(model)
    notes: list[str] = []
    groups = adapter.prune_groups(model, ["heads", "ffn"], kv_cache, notes)
    # keep the odd units (at least one): a choice the ranking could make, independent of the weights
    keep = [[u for u in range(g.count) if u % 2 == 1] or [0] for g in groups]
    silenced = copy.deepcopy(model)
    silence(silenced, adapter.prune_groups(silenced, ["heads", "ffn"], kv_cache, []), keep)
    batch = inputs(model)
    before = sum(p.numel() for p in model.parameters())
    pruned, facts = adapter.remove_units(model, groups, keep)
    check_config(pruned)  # a model built from the config has the pruned shapes
    assert sum(p.numel() for p in pruned.parameters()) < before
    assert facts["ffn"] and all(n == g.count // 2 for n, g in zip(facts["ffn"], [g for g in groups
                                                                                if g.key[0] == "ffn"]))
    with torch.no_grad():
        torch.testing.assert_close(pruned(**batch).logits, silenced(**batch).logits, rtol=1e-4, atol=1e-4)
    heads_removed = any(g.key[0] == "heads" for g in groups)
    assert heads_removed or notes, "heads kept without saying why"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_layer_dropping_and_fresh_students(name):
    model, _ = build(name)
    adapter = adapter_for(model)
    student = adapter.drop_layers(model, [1], "test")
    assert adapter.layer_count(student) == 1
    with torch.no_grad():
        student(**inputs(student))
    fresh = adapter.fresh_student(model, 1, 0, 0, "test", seed=0)
    assert adapter.layer_count(fresh) == 1
    with torch.no_grad():
        fresh(**inputs(fresh))
    with pytest.raises(UserError, match="out of range"):
        adapter.drop_layers(model, [5], "test")


@pytest.mark.parametrize("name", ["bert", "llama", "gpt2", "vit"])
def test_mac_count_matches_torch_flop_counter(name):
    model, kv_cache = build(name)
    batch = inputs(model)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**batch)
    rows = batch["input_ids"].shape[0] if "input_ids" in batch else 2
    seq = batch["input_ids"].shape[1] if "input_ids" in batch else None
    if seq is None:  # ViT: 16x16 image in 8x8 patches plus the class token
        seq = (16 // 8) ** 2 + 1
    macs = adapter_for(model).count_macs(model, seq, token_head=kv_cache)
    conv = 0
    if name == "vit":  # the patch embedding is a convolution, which the transformer count leaves out
        conv = 3 * 8 * 8 * 32 * (16 // 8) ** 2
    counted = counter.get_total_flops() // 2 // rows
    if name == "llama":  # rotary embeddings: one (head_dim / 2) x T product of frequencies and positions
        counted -= (model.config.hidden_size // model.config.num_attention_heads // 2) * seq // 2
    assert macs + conv == counted


def test_a_model_without_layers_it_knows_is_one_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(UserError, match="no structure this toolkit can read"):
        adapter_for(model)

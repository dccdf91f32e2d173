"""The module layouts transformer layers come in, and the config keys that size them.

Families are recognised by these names, not by their ``model_type``: a layer whose attention has ``q_proj``,
``k_proj``, ``v_proj`` and ``o_proj`` is handled the same whether it is Llama, Qwen2, Mistral or a family not
released yet. Each shape is checked against the weights' sizes before it is used. Adding a family whose layers
are named differently is one entry here (and a test).
"""
from __future__ import annotations

ATTENTION_QKV: tuple[tuple[str, str, str], ...] = (
    ("query", "key", "value"),              # BERT, RoBERTa, ELECTRA, ViT, MobileBERT
    ("query_proj", "key_proj", "value_proj"),  # DeBERTa-v2
    ("q_proj", "k_proj", "v_proj"),         # BART, Marian, mBART, Llama, Qwen2, Mistral, Gemma
    ("q_lin", "k_lin", "v_lin"),            # DistilBERT
    ("q", "k", "v"),                        # T5
)
"""separate query/key/value projections, as children of one attention module"""

ATTENTION_FUSED: tuple[str, ...] = ("c_attn", "qkv_proj", "query_key_value", "Wqkv")
"""one projection making query, key and value in that order (GPT-2, Phi-3, ...)"""

ATTENTION_OUT: tuple[str, ...] = ("o_proj", "out_proj", "out_lin", "o", "c_proj", "dense")
"""the output projection: a child of the attention module, else ``output.dense`` beside it (BERT)"""

CROSS_ATTENTION: tuple[str, ...] = ("encoder_attn", "EncDecAttention", "crossattention", "cross_attn")
"""attention modules that read the encoder's output (they are pruned with the self-attention)"""

FFN: tuple[tuple[tuple[str, ...], str], ...] = (
    (("intermediate.dense",), "output.dense"),              # BERT family, ViT
    (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),    # Llama family (SwiGLU)
    (("mlp.c_fc",), "mlp.c_proj"),                          # GPT-2
    (("fc1",), "fc2"),                                      # BART family
    (("mlp.fc1",), "mlp.fc2"),                              # Phi, CLIP, DeiT-style
    (("ffn.lin1",), "ffn.lin2"),                            # DistilBERT
    (("DenseReluDense.wi_0", "DenseReluDense.wi_1"), "DenseReluDense.wo"),  # T5 v1.1 (gated)
    (("DenseReluDense.wi",), "DenseReluDense.wo"),          # T5
    (("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h"),          # GPT-NeoX, Falcon
)
"""(the projections into the hidden FFN width, the projection back), relative to the layer (T5 nests them one
level deeper, inside ``layer.<i>``: found by suffix)"""

FFN_FUSED_GATE: tuple[tuple[str, str], ...] = (("mlp.gate_up_proj", "mlp.down_proj"),)
"""one projection making [gate; up] (Phi-3): a neuron is a row in each half"""

LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers", "decoder_layers",
              "num_decoder_layers")
HEAD_KEYS = ("num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads",
             "decoder_attention_heads")
KV_HEAD_KEYS = ("num_key_value_heads", "num_kv_heads", "multi_query_group_num")
FFN_KEYS = ("intermediate_size", "n_inner", "hidden_dim", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "d_ff")
WIDTH_KEYS = ("hidden_size", "n_embd", "dim", "d_model")
HEAD_DIM_KEYS = ("head_dim", "d_kv", "attention_head_size")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len")

HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "num_key_value_heads",
                    "n_kv_heads", "num_kv_heads")
"""attention-module attributes that hold a head count (updated when heads are removed)"""
HEAD_SIZE_ATTRS = ("all_head_size", "inner_dim", "split_size", "embed_dim_per_partition")
"""attention-module attributes that hold heads x head size"""
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "key_value_proj_dim", "dim_per_head", "head_size")

ORT_FUSIONS = {"bert": "bert", "roberta": "bert", "distilbert": "bert", "xlm-roberta": "bert", "camembert": "bert",
               "electra": "bert", "gpt2": "gpt2"}
"""model_type -> onnxruntime.transformers.optimizer model_type, for the families whose fused graphs this toolkit
checks against the unfused one (others are quantized unfused; ONNX Runtime still fuses at load time)"""

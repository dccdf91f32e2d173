"""The adapter of this toolkit's CNN (``builtin:cnn-small``, model_type ``edge-cnn``): channels are its units.

Structured pruning removes output channels of each width (the conv that makes them, its BatchNorm, the depthwise
conv and BatchNorm that read them, the pointwise conv or the classifier after them) and rebuilds a narrower CNN
with the kept channels copied; students are fresh, narrower EdgeCNNs.
"""
from __future__ import annotations

import copy
from typing import Any

from toolkit.arch.base import Group, Stack, unsupported
from toolkit.errors import UserError
from toolkit.registry import ADAPTERS

FAMILY = "edge-cnn"


class EdgeCNNAdapter:
    kind = "cnn"

    def matches(self, model: Any) -> bool:
        return getattr(getattr(model, "config", None), "model_type", None) == FAMILY

    def family(self, model: Any) -> str:
        return FAMILY

    def stacks(self, model: Any) -> list[Stack]:
        return [Stack(name="blocks", layers=model.blocks, count_key="", role="layers")]

    def width(self, model: Any) -> int:
        return 0

    def layer_count(self, model: Any) -> int:
        return len(model.blocks)

    def prune_groups(self, model: Any, parts: list[str], kv_cache: bool, notes: list[str]) -> list[Group]:
        """One group per width: the conv that makes the channels (+ BN), the layers that read them."""
        blocks = list(model.blocks)
        groups = []
        for i, width in enumerate(model.config.widths):
            conv, bn = ((model.stem[0], model.stem[1]) if i == 0 else
                        (blocks[i - 1].pointwise[0], blocks[i - 1].pointwise[1]))
            p = [(conv.weight, 0, 0, 1), (bn.weight, 0, 0, 1), (bn.bias, 0, 0, 1)]
            if i < len(blocks):
                dw, dbn, pw = blocks[i].depthwise[0], blocks[i].depthwise[1], blocks[i].pointwise[0]
                p += [(dw.weight, 0, 0, 1), (dbn.weight, 0, 0, 1), (dbn.bias, 0, 0, 1), (pw.weight, 1, 0, 1)]
            else:
                p.append((model.classifier.weight, 1, 0, 1))
            # magnitude ranks a channel by its producing filter only (Li et al. 2017)
            groups.append(Group(("channels", i), width, p, 1))
        return groups

    def remove_units(self, model: Any, groups: list[Group], keep: list[list[int]]) -> tuple[Any, dict[str, Any]]:
        """A narrower EdgeCNN holding the kept channels of every conv, BatchNorm and the classifier."""
        import torch

        from toolkit.models.cnn import EdgeCNNForImageClassification

        cfg = copy.deepcopy(model.config)
        cfg.widths = [len(k) for k in keep]
        small = EdgeCNNForImageClassification(cfg)
        idx = [torch.tensor(k, dtype=torch.long) for k in keep]
        state = {}
        for key, t in model.state_dict().items():
            if key.endswith("num_batches_tracked") or key == "classifier.bias":
                state[key] = t
                continue
            parts = key.split(".")
            if parts[0] == "stem":
                state[key] = t[idx[0]]
            elif parts[0] == "classifier":
                state[key] = t[:, idx[-1]]
            else:  # blocks.<b>.depthwise|pointwise.<0 conv | 1 bn>.<tensor>
                b, which = int(parts[1]), parts[2]
                if which == "depthwise":
                    state[key] = t[idx[b]]  # reads (and keeps) the channels of width b
                elif parts[3] == "0":
                    state[key] = t[idx[b + 1]][:, idx[b]]  # pointwise conv: out = width b + 1, in = width b
                else:
                    state[key] = t[idx[b + 1]]
        small.load_state_dict(state, strict=True)
        return small, {"channels": cfg.widths, "channels_before": list(model.config.widths)}

    def drop_layers(self, model: Any, keep: list[int], where: str) -> Any:
        raise UserError(f"{where}: CNN students are set with widths = [...] (layers/hidden_size/heads are for "
                        f"transformers)")

    def fresh_student(self, model: Any, layers: int, width: int, heads: int, where: str, seed: int) -> Any:
        raise UserError(f"{where}: CNN students are set with widths = [...] (layers/hidden_size/heads are for "
                        f"transformers)")

    def narrow_student(self, model: Any, widths: list[int], seed: int) -> Any:
        """A fresh EdgeCNN with ``widths`` (strides kept when the depth is the same)."""
        from toolkit.models.cnn import EdgeCNNConfig, EdgeCNNForImageClassification, default_strides
        from toolkit.tasks.common import seeded

        c = model.config
        strides = list(c.strides) if len(widths) == len(c.widths) else default_strides(min(c.image_size), len(widths))
        cfg = EdgeCNNConfig(in_channels=c.in_channels, widths=widths, strides=strides, image_size=list(c.image_size),
                            dropout=c.dropout, num_labels=c.num_labels, id2label=c.id2label, label2id=c.label2id)
        with seeded(seed):
            return EdgeCNNForImageClassification(cfg)

    def default_student_widths(self, model: Any) -> list[int]:
        return [max(8, w // 2) for w in model.config.widths]

    def linear_layers(self, model: Any) -> list[tuple[str, Any, int]]:
        import torch

        return [(n, m, 0) for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]

    def lora_targets(self, model: Any) -> list[str]:
        return []

    def lora_fan_in_fan_out(self, model: Any) -> bool:
        return False

    def ort_fusion(self, config: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def count_macs(self, model: Any, seq_len: int, token_head: bool) -> int:
        """Every conv (groups included) over its output positions, plus the classifier."""
        import torch

        h, w = model.config.image_size
        total = 0
        for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            total += h * w * conv.out_channels * (conv.in_channels // conv.groups) * k * k
        return total + model.classifier.in_features * model.classifier.out_features

    def head_mode(self, model: Any, kv_cache: bool) -> tuple[str | None, str]:
        return None, "a CNN has channels, not attention heads"

    def refuse_hidden_matching(self, model: Any, where: str) -> UserError:
        return unsupported(model, "hidden/attention matching", "it matches transformer layers",
                           "use logit distillation only (hidden_weight = attention_weight = 0)")


ADAPTERS.register("edge-cnn", EdgeCNNAdapter())

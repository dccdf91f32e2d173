"""What each model family can do, stage by stage: the claims `test_matrix.py` checks cell by cell and the README's
support matrix shows (`make readme`). A cell is

- ``OK``: the step did what it says (checked: layers dropped, units removed, INT8 nodes present, files verified ...);
- ``Part(why)``: it works with a stated limit (checked: what works, and the limit as the run reports it);
- ``No(why)``: it is refused up front or not produced, with that reason (checked: the reason appears);
- ``NA``: the stage does not apply to the task.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    why: str


@dataclass(frozen=True)
class No:
    why: str


OK, NA = "ok", "n/a"

CELLS = ("train", "lora", "distill-layers", "distill-fresh", "prune-structured", "prune-unstructured", "int8", "fp16",
         "onnx", "ort", "pte", "torchscript", "eval", "generation", "report")
"""the matrix's columns, in the order the README shows them"""

HEADS_TIED = Part("FFN neurons only: the config ties the head size to the width, so fewer heads cannot be described")
NO_TRACE = No("torch.jit.trace fails on the decoder's mask code (ONNX, .ort and .pte work)")
STATIC_PTE = Part("static shapes, no KV cache: each call recomputes the window")

NO_DEPTHS = No("no per-stage block counts (depths) in its config: a fresh, narrower student works")
CNN_LORA = No("not by default: a CNN's weights are convolutions (depthwise ones cannot take a low-rank update); "
              "name plain convolutions in train.lora.target_modules, or train fully")

ENCODER = {c: OK for c in CELLS} | {"generation": NA}
DECODER = {c: OK for c in CELLS} | {"pte": STATIC_PTE}
SEQ2SEQ = {c: OK for c in CELLS} | {"pte": STATIC_PTE}
VIT = {c: OK for c in CELLS} | {"generation": NA}
CNN = VIT | {"lora": CNN_LORA}

SUPPORT: dict[str, dict[str, object]] = {
    "bert": ENCODER,
    "distilbert": ENCODER,
    "roberta": ENCODER,
    "xlm-roberta": ENCODER,
    "electra": ENCODER,
    "deberta-v2": ENCODER | {"prune-structured": HEADS_TIED},
    "mobilebert": ENCODER,
    "gpt2": DECODER | {"prune-structured": HEADS_TIED, "torchscript": NO_TRACE},
    "llama": DECODER | {"torchscript": NO_TRACE},
    "qwen2": DECODER | {"torchscript": NO_TRACE},
    "mistral": DECODER | {"torchscript": NO_TRACE},
    "phi3": DECODER | {"torchscript": NO_TRACE},
    "gemma": DECODER | {"torchscript": NO_TRACE},
    "opt": DECODER | {"prune-structured": HEADS_TIED},
    "bart": SEQ2SEQ | {"prune-structured": HEADS_TIED},
    "mbart": SEQ2SEQ | {"prune-structured": HEADS_TIED},
    "marian": SEQ2SEQ | {"prune-structured": HEADS_TIED},
    "t5": SEQ2SEQ,
    "vit": VIT,
    "deit": VIT,
    "resnet": CNN,
    "mobilenet_v2": CNN | {"distill-layers": NO_DEPTHS},
    "convnext": CNN,
    "efficientnet": CNN | {"distill-layers": NO_DEPTHS},
    "mobilevit": CNN | {"distill-layers": NO_DEPTHS},
    "regnet": CNN,
}
REFUSED_WITH = {NO_DEPTHS: "no per-stage block counts (depths)", CNN_LORA: "cannot take a low-rank update"}
"""for a step cell marked No: the words its refusal (exit 2, before any work) must contain"""


def status(cell: object) -> str:
    return "ok" if cell == OK else "n/a" if cell == NA else "part" if isinstance(cell, Part) else "no"


def markdown(families: dict[str, object]) -> str:
    """The README's support matrix: one row per family, ✔ / ◐ / ✘ / – per cell, the reasons below the table."""
    marks = {"ok": "✔", "part": "◐", "no": "✘", "n/a": "–"}
    notes: list[str] = []
    rows = ["| family | task | " + " | ".join(CELLS) + " |", "|---|---|" + "---|" * len(CELLS)]
    for name, cells in SUPPORT.items():
        task = getattr(families.get(name), "task", "")
        shown = []
        for c in CELLS:
            cell = cells[c]
            mark = marks[status(cell)]
            if isinstance(cell, (Part, No)):
                if cell.why not in notes:
                    notes.append(cell.why)
                mark += f"<sup>{notes.index(cell.why) + 1}</sup>"
            shown.append(mark)
        named = "" if getattr(families.get(name), "named", True) else " (not named in the code)"
        rows.append(f"| {name}{named} | {task} | " + " | ".join(shown) + " |")
    legend = ["", "✔ works (the matrix test checks it did what it says) · ◐ works with the limit in the note · "
              "✘ refused or not produced, with the reason · – does not apply", ""]
    return "\n".join(rows + legend + [f"{i}. {why}" for i, why in enumerate(notes, 1)]) + "\n"

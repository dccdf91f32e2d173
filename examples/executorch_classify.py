"""Classify one input with an exported bundle's ExecuTorch program (model.pte, XNNPACK delegate).

    python examples/executorch_classify.py runs/sst2/variants/base "a gripping, well acted film"
    python examples/executorch_classify.py runs/demo/variants/base digit.png        # or a .npy of raw pixels

The bundle folder holds model.pte, preprocess.json (task, max_length / image size and scale, or the steps of a
Hugging Face image processor), labels.json and, for text, tokenizer.json. Needs numpy, executorch (which brings torch)
and (text) tokenizers; (images) Pillow and image_preprocess.py beside this file.
A .pte stores no input names: the toolkit's programs take (input_ids, attention_mask) or (pixel_values). A program
exported with static shapes gets its inputs right-padded (mask 0) to the sizes it was made for.
Prints the label and its probability, tab-separated.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from executorch.runtime import Runtime


def text_inputs(bundle: Path, pre: dict, text: str) -> list:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=pre.get("max_length", 128))
    ids = np.array([tok.encode(text).ids], dtype=np.int64)  # (1, T), special tokens included
    return [ids, np.ones_like(ids)]


def image_inputs(pre: dict, path: str) -> list:
    """The image preprocessed as preprocess.json says (image_preprocess.py beside this file)."""
    from image_preprocess import image_array

    return [image_array(pre, path)]  # (1, C, H, W)


def padded(method, arrays: list) -> list:
    """Inputs padded to a static program's sizes: token rows right-padded with 0 (mask 0), the batch filled."""
    out = []
    for i, a in enumerate(arrays):
        sizes = list(method.metadata.input_tensor_meta(i).sizes())
        pad = [(0, max(0, s - d)) for d, s in zip(a.shape, sizes)]
        out.append(np.pad(a, pad)[tuple(slice(0, s) for s in sizes)])
    return out


def main(bundle: str, given: str) -> None:
    folder = Path(bundle)
    pre = json.loads((folder / "preprocess.json").read_text())
    labels = json.loads((folder / "labels.json").read_text())
    program = Runtime.get().load_program(str(folder / "model.pte"))
    method = program.load_method("forward")
    arrays = text_inputs(folder, pre, given) if pre["task"] == "text-classification" else image_inputs(pre, given)
    try:
        logits = method.execute([torch.from_numpy(a) for a in arrays])[0]
    except Exception:  # a static-shape program: feed it the sizes it was exported with
        logits = method.execute([torch.from_numpy(np.ascontiguousarray(a)) for a in padded(method, arrays)])[0]
    probs = torch.softmax(logits[0].float(), dim=-1).numpy()
    best = int(probs.argmax())
    print(f"{labels[best]}\t{probs[best]:.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])

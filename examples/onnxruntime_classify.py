"""Classify one input with an exported bundle in ONNX Runtime: the files `python -m toolkit export` writes.

    python examples/onnxruntime_classify.py runs/sst2/variants/base "a gripping, well acted film"
    python examples/onnxruntime_classify.py runs/demo/variants/int8 digit.png      # or a .npy of raw pixels

The bundle folder holds model.onnx, preprocess.json (task, max_length / image size and scale, or the steps of a
Hugging Face image processor), labels.json and, for text, tokenizer.json. Needs only numpy, onnxruntime and (text)
tokenizers; (images) Pillow and image_preprocess.py beside this file.
Prints the label and its probability, tab-separated.
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def clean(text: str, steps: list) -> str:
    """The recipe's `data.clean` steps, which preprocess.json lists (the model was trained on cleaned text), as
    toolkit/data/clean.py applies them; `pii` (its regexes) is left to the toolkit and warned about."""
    import html
    import re
    import unicodedata

    block = {"address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "footer", "h1", "h2", "h3",
             "h4", "h5", "h6", "header", "hr", "li", "ol", "p", "pre", "section", "table", "td", "th", "tr", "ul"}

    def no_tags(s: str) -> str:  # block tags leave a space so the words on both sides stay apart
        s = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", "", s)
        tag = lambda m: " " if m.group(1).lower() in block else ""  # noqa: E731
        return html.unescape(re.sub(r"</?\s*([a-zA-Z0-9]+)[^>]*>", tag, s))

    steps_known = {
        "html": no_tags, "lower": str.lower, "whitespace": lambda s: " ".join(s.split()),
        "control": lambda s: "".join(c for c in s if c in "\n\t" or (unicodedata.category(c) != "Cc"
                                                                     and c not in "\ufeff\u200b")),
        "punct": lambda s: "".join(c for c in s if not unicodedata.category(c).startswith("P")),
    }
    for step in steps:
        if step in steps_known:
            text = steps_known[step](text)
        elif step != "dedup":
            print(f"warning: cleaning step '{step}' is not replayed here; see toolkit/data/clean.py", file=sys.stderr)
    return text


def text_inputs(bundle: Path, pre: dict, text: str) -> dict:
    from tokenizers import Tokenizer

    text = clean(text, pre.get("clean") or [])
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=pre.get("max_length", 128))
    ids = np.array([tok.encode(text).ids], dtype=np.int64)  # (1, T), special tokens included
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def image_inputs(pre: dict, path: str) -> dict:
    """The image preprocessed as preprocess.json says (image_preprocess.py beside this file)."""
    from image_preprocess import image_array

    return {"pixel_values": image_array(pre, path)}  # (1, C, H, W)


def main(bundle: str, given: str) -> None:
    folder = Path(bundle)
    pre = json.loads((folder / "preprocess.json").read_text())
    labels = json.loads((folder / "labels.json").read_text())
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = text_inputs(folder, pre, given) if pre["task"] == "text-classification" else image_inputs(pre, given)
    wanted = {i.name for i in session.get_inputs()}
    logits = session.run(None, {k: v for k, v in feed.items() if k in wanted})[0][0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    best = int(probs.argmax())
    print(f"{labels[best]}\t{probs[best]:.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])

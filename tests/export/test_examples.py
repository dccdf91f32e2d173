"""examples/: each minimal program loads an exported bundle folder in its runtime, preprocesses one input given on
the command line as the bundle says, and prints the label PyTorch predicts for it."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.exir", reason="ExecuTorch is an optional extra: pip install 'edge-toolkit[executorch]'")
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
HELPER = Path(__file__).resolve().parents[1] / "fixtures" / "export" / "stage_runs.py"
PROGRAMS = ["onnxruntime_classify.py", "ort_mobile_classify.py", "executorch_classify.py"]


def load_helper():
    if "stage_runs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("stage_runs", HELPER)
        module = importlib.util.module_from_spec(spec)
        sys.modules["stage_runs"] = module
        spec.loader.exec_module(module)
    return sys.modules["stage_runs"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_helper().digits_run(tmp_path_factory.getbasetemp() / "stage-runs")


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    return load_helper().text_run(tmp_path_factory.getbasetemp() / "stage-runs")


def _run(program: str, bundle: Path, given: str) -> tuple[str, float]:
    # a plain interpreter outside the repository: the examples must not need the toolkit
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / program), str(bundle), given], capture_output=True,
                          text=True, cwd=bundle, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    label, prob = proc.stdout.strip().splitlines()[-1].split("\t")
    return label, float(prob)


def test_examples_do_not_import_the_toolkit():
    for program in PROGRAMS:
        source = (EXAMPLES / program).read_text()
        assert "import toolkit" not in source and "from toolkit" not in source, program


@pytest.mark.parametrize("program", PROGRAMS)
def test_image_bundle(program, digits, tmp_path):
    from sklearn.datasets import load_digits

    import toolkit.models  # noqa: F401  (registers the CNN)
    from transformers import AutoModelForImageClassification

    _, run, _ = digits
    bundle = run.variant("base")
    labels = json.loads((bundle / "labels.json").read_text())
    raw = load_digits().images[7]  # 8x8, values 0..16 as the data set stores them
    np.save(tmp_path / "digit.npy", raw)
    model = AutoModelForImageClassification.from_pretrained(bundle / "model").eval()
    with torch.no_grad():
        logits = model(pixel_values=torch.from_numpy(raw / 16.0).float()[None, None]).logits[0]
    expected = labels[int(logits.argmax())]
    label, prob = _run(program, bundle, str(tmp_path / "digit.npy"))
    assert label == expected
    assert prob == pytest.approx(float(torch.softmax(logits, -1).max()), abs=1e-4)


@pytest.mark.parametrize("program", PROGRAMS)
def test_text_bundle(program, text):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, run, _ = text
    bundle = run.variant("base")
    labels = json.loads((bundle / "labels.json").read_text())
    sentence = "great acting and a fine story"
    tok = AutoTokenizer.from_pretrained(bundle / "model")
    model = AutoModelForSequenceClassification.from_pretrained(bundle / "model").eval()
    with torch.no_grad():
        logits = model(**tok(sentence, return_tensors="pt", truncation=True, max_length=32)).logits[0]
    label, prob = _run(program, bundle, sentence)
    assert label == labels[int(logits.argmax())]
    assert prob == pytest.approx(float(torch.softmax(logits, -1).max()), abs=1e-4)


def test_int8_bundle_runs_in_onnxruntime(digits, tmp_path):
    import onnxruntime as ort
    from sklearn.datasets import load_digits

    _, run, _ = digits
    bundle = run.variant("int8")  # what the compression stage made, with the bundle files beside it
    raw = load_digits().images[11]
    np.save(tmp_path / "digit.npy", raw)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"pixel_values": (raw / 16.0).astype(np.float32)[None, None]})[0][0]
    labels = json.loads((bundle / "labels.json").read_text())
    for program in PROGRAMS[:2]:
        label, _ = _run(program, bundle, str(tmp_path / "digit.npy"))
        assert label == labels[int(logits.argmax())]


def test_an_image_file_is_read_resized_and_scaled(digits, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    import toolkit.models  # noqa: F401  (registers the CNN)
    from transformers import AutoModelForImageClassification

    _, run, _ = digits
    bundle = run.variant("base")
    pixels = (load_digits().images[5] * 255 / 16).astype(np.uint8)  # 8x8 grey, 0..255
    Image.fromarray(pixels).convert("RGB").resize((32, 32), Image.NEAREST).save(tmp_path / "digit.png")
    model = AutoModelForImageClassification.from_pretrained(bundle / "model").eval()
    with torch.no_grad():  # what the example must compute: grey, back to 8x8, /255
        x = torch.from_numpy(pixels / 255.0).float()[None, None]
        expected = json.loads((bundle / "labels.json").read_text())[int(model(pixel_values=x).logits[0].argmax())]
    assert _run("onnxruntime_classify.py", bundle, str(tmp_path / "digit.png"))[0] == expected


def test_the_bundle_example_cleans_text_as_training_did():
    """preprocess.json lists the recipe's data.clean steps; the standalone example replays them as the toolkit does."""
    import importlib.util

    from toolkit.data.clean import clean_text

    spec = importlib.util.spec_from_file_location("ort_example", EXAMPLES / "onnxruntime_classify.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    text = "  <p>A <b>GRIPPING</b>,\u200b well-acted film!</p><script>x()</script>\tTruly &amp; deeply.\x07 "
    for steps in (["lower"], ["whitespace"], ["control"], ["punct"], ["control", "lower", "punct", "whitespace"]):
        assert example.clean(text, steps) == clean_text(text, steps), steps
    assert " ".join(example.clean(text, ["html"]).split()) == " ".join(clean_text(text, ["html"]).split())

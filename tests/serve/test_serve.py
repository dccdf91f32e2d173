"""`toolkit serve` on real servers over 127.0.0.1: predictions equal eval's, every error case, streaming, batching,
and a graceful stop under load."""
from __future__ import annotations

import base64
import io
import json
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from toolkit.cli.serve import listening_socket
from toolkit.config import recipe_from_dict
from toolkit.errors import UserError
from toolkit.rundir import RunDir
from toolkit.session import run_session

COMMON = {"seed": 0, "export": {"formats": ["onnx"]},
          "eval": {"limit": 24, "targets": ["host"], "latency": {"warmup": 1, "runs": 3, "rounds": 2, "budget_s": 0,
                                                                "seq_len": 16, "new_tokens": 4, "generation_runs": 1},
                   "max_new_tokens": 6}}
TRAIN = {"batch_size": 16, "lr": 3e-3, "threads": 1, "checkpoint_every": 0}


def _sentiment(path: Path, n: int = 240) -> None:
    rng = random.Random(0)
    pos, neg = "good great lovely superb".split(), "bad awful dull boring".split()
    filler = "the film plot was and a it is this movie story".split()
    rows = ["sentence\tlabel"]
    for i in range(n):
        words = [rng.choice(filler) for _ in range(rng.randint(2, 8))] + [rng.choice(pos if i % 2 else neg)] * 2
        rng.shuffle(words)
        rows.append(" ".join(words) + f"\t{'positive' if i % 2 else 'negative'}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _session(root: Path, table: dict) -> RunDir:
    recipe = recipe_from_dict({**COMMON, **table}, str(root / "recipe.toml"))
    run = RunDir(root / "run")
    run_session(recipe, run)
    return run


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> RunDir:
    root = tmp_path_factory.mktemp("serve-text")
    _sentiment(root / "reviews.tsv")
    return _session(root, {
        "name": "serve-text", "task": "text-classification",
        "data": {"train": str(root / "reviews.tsv"), "text_column": "sentence", "max_length": 32,
                 "split": [0.7, 0.2, 0.1], "clean": ["lower"]},
        "model": {"source": "builtin:bert-tiny", "vocab_size": 200},
        "train": {**TRAIN, "max_steps": 40},
        "compress": [{"method": "quantize", "name": "int8", "scheme": "int8-dynamic", "from": "base"}]})


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> RunDir:
    root = tmp_path_factory.mktemp("serve-lm")
    rng = random.Random(1)
    words = "the cat sat on a mat and then it ran to see dog".split()
    (root / "text.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)),
                                   encoding="utf-8")
    return _session(root, {
        "name": "serve-lm", "task": "language-modeling",
        "data": {"train": str(root / "text.txt"), "max_length": 32, "split": [0.8, 0.1, 0.1]},
        "model": {"source": "builtin:gpt2-tiny", "vocab_size": 120}, "train": {**TRAIN, "max_steps": 30}})


class Server:
    """A real uvicorn server on 127.0.0.1 (a free port) in a thread of this process."""

    def __init__(self, run: RunDir, variant: str | None = None, runtime: str | None = None, **options) -> None:
        import uvicorn

        from toolkit.serve.app import create_app
        from toolkit.serve.model import load_served

        self.served = load_served(run.path, variant, runtime, threads=1)
        self.sock = listening_socket("127.0.0.1", 0)  # as the CLI binds it
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.served, **options), log_level="error"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        _wait_ready(self.url)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} never became ready")


def _eval_probs(run: RunDir, variant: str, texts: list[str]) -> np.ndarray:
    """The probabilities eval computes for ``texts``: eval's ONNX harness on examples encoded by the tokenizer of
    the trained model folder (lower-cased, as the recipe's data.clean does to training data)."""
    from transformers import AutoTokenizer

    from toolkit.eval.onnx_eval import classification_probs
    from toolkit.tasks.text_classification import text_codec
    from toolkit.variants import load_variants

    model_dir = run.variants / "base" / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    labels = json.loads((model_dir / "labels.json").read_text())
    encode, collate = text_codec(tokenizer, labels, 32, tokenizer.pad_token_id)
    items = encode([{"text": t.lower(), "label": labels[0]} for t in texts], "eval")
    return classification_probs(load_variants(run.variants)[variant].onnx, items, collate, 1)["probs"]


TEXTS = ["This Movie was GREAT and lovely", "awful plot", "the story is dull and boring, a weak film", "superb"]


def test_predictions_equal_evals_for_a_float_variant(text_run):
    with Server(text_run, "base") as s:
        got = httpx.post(f"{s.url}/v1/predict", json={"inputs": TEXTS}).json()["predictions"]
    want = _eval_probs(text_run, "base", TEXTS)
    labels = json.loads((text_run.variants / "base" / "model" / "labels.json").read_text())
    for row, p in zip(got, want):
        assert row["label"] == labels[int(p.argmax())]
        assert np.allclose([row["scores"][n] for n in labels], p, atol=1e-5, rtol=0)
    # the model learnt the task, so the comparison is not between two constant outputs
    assert [r["label"] for r in got] == ["positive", "negative", "negative", "positive"]


def test_the_report_recommendation_is_served_and_described(text_run):
    report = json.loads(text_run.report_json.read_text())
    with Server(text_run) as s:
        info = httpx.get(f"{s.url}/v1/model").json()
        metrics = httpx.get(f"{s.url}/metrics").text
        docs = httpx.get(f"{s.url}/docs")
        spec = httpx.get(f"{s.url}/openapi.json").json()
    assert info["variant"] == report["recommendation"]["host"]
    assert info["task"] == "text-classification" and info["endpoint"] == "/v1/predict"
    assert info["labels"] == ["negative", "positive"] and info["clean"] == ["lower"]
    manifest = {a["path"]: a["sha256"] for a in json.loads(text_run.manifest.read_text())["artifacts"]}
    for f in info["files"]:
        assert len(f["sha256"]) == 64 and manifest.get(f["path"], f["sha256"]) == f["sha256"]
    assert docs.status_code == 200 and "/v1/predict" in spec["paths"]
    assert "toolkit_requests_total" in metrics or "toolkit_batch_size_bucket" in metrics


def test_int8_scores_move_only_slightly_with_batching(text_run):
    with Server(text_run, "int8") as s:
        alone = [httpx.post(f"{s.url}/v1/predict", json={"inputs": [t]}).json()["predictions"][0] for t in TEXTS]
        together = httpx.post(f"{s.url}/v1/predict", json={"inputs": TEXTS}).json()["predictions"]
    assert [a["label"] for a in alone] == [b["label"] for b in together]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(alone, together)) < 0.05


def test_bad_requests_get_4xx_naming_the_field_and_the_server_goes_on(text_run):
    with Server(text_run, "base", max_request_bytes=2000) as s:
        cases = [
            (httpx.post(f"{s.url}/v1/predict", content=b'{"inputs": [', headers={"content-type": "application/json"}),
             422, None),
            (httpx.post(f"{s.url}/v1/predict", json={"input": ["x"]}), 422, "inputs"),  # the missing key is named first
            (httpx.post(f"{s.url}/v1/predict", json={"inputs": "not a list"}), 422, "inputs"),
            (httpx.post(f"{s.url}/v1/predict", json={"inputs": []}), 422, "inputs"),
            (httpx.post(f"{s.url}/v1/predict", json={"inputs": ["fine", "   "]}), 422, "inputs.1"),
            (httpx.post(f"{s.url}/v1/predict", json={"inputs": ["x" * 3000]}), 413, None),
            (httpx.post(f"{s.url}/v1/generate", json={"prompt": "hello"}), 404, None),
            (httpx.post(f"{s.url}/v1/translate", json={"inputs": ["hello"]}), 404, None),
        ]
        for response, status, field in cases:
            assert response.status_code == status, response.text
            body = response.json()
            assert body["field"] == field and body["error"], body
        assert "POST /v1/predict" in cases[-2][0].json()["error"]
        ok = httpx.post(f"{s.url}/v1/predict", json={"inputs": ["still serving"]})
        metrics = httpx.get(f"{s.url}/metrics").text
    assert ok.status_code == 200
    assert re.search(r'toolkit_requests_total\{path="/v1/predict",status="422"\} 5\.0', metrics), metrics
    assert re.search(r'toolkit_requests_total\{path="/v1/predict",status="413"\} 1\.0', metrics), metrics


def test_a_request_over_max_batch_is_split_and_concurrent_ones_are_batched(text_run):
    texts = [f"{random.Random(i).choice(TEXTS)} {i}" for i in range(37)]
    with Server(text_run, "base", max_batch=8, max_wait_ms=20) as s:
        whole = httpx.post(f"{s.url}/v1/predict", json={"inputs": texts}).json()["predictions"]
        with ThreadPoolExecutor(16) as pool:
            single = list(pool.map(lambda t: httpx.post(f"{s.url}/v1/predict", json={"inputs": [t]},
                                                        timeout=60).json()["predictions"][0], texts))
        metrics = httpx.get(f"{s.url}/metrics").text
    assert len(whole) == 37
    assert [a["label"] for a in whole] == [b["label"] for b in single]
    assert np.allclose([a["score"] for a in whole], [b["score"] for b in single], atol=1e-5)
    count = float(re.search(r"toolkit_batch_size_count (\S+)", metrics).group(1))
    inputs = float(re.search(r"toolkit_batch_size_sum (\S+)", metrics).group(1))
    assert inputs == 2 * 37  # (the warm-up runs the model directly, not through the batcher)
    assert re.search(r'toolkit_batch_size_bucket\{le="8.0"\} (\S+)', metrics).group(1) == str(count)  # ≤ 8 each
    assert count < 5 + 37  # the concurrent singles shared batches


def test_timeouts_are_503_and_counted(text_run):
    with Server(text_run, "base", timeout_s=0.001) as s:
        r = httpx.post(f"{s.url}/v1/predict", json={"inputs": TEXTS * 20})
        metrics = httpx.get(f"{s.url}/metrics").text
        assert httpx.get(f"{s.url}/health").status_code == 200
    assert r.status_code == 503 and "timed out" in r.json()["error"]
    assert re.search(r'toolkit_timeouts_total\{path="/v1/predict"\} 1\.0', metrics)


def test_generation_greedy_equals_transformers_and_streams_the_same_text(lm_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.eval.generation import _prompt_ids

    folder = lm_run.variants / "base" / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = "the cat sat on"
    ids = _prompt_ids(tokenizer, prompt, None, 0)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, min_new_tokens=8,
                             pad_token_id=tokenizer.eos_token_id)
    want = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    with Server(lm_run, "base", runtime="pytorch") as s:
        got = httpx.post(f"{s.url}/v1/generate", json={"prompt": prompt, "max_new_tokens": 8}, timeout=60).json()
    assert got["text"] == want and got["tokens"] == 8
    with Server(lm_run, "base") as s:  # ONNX Runtime, its KV cache, streamed
        plain = httpx.post(f"{s.url}/v1/generate", json={"prompt": prompt, "max_new_tokens": 8}, timeout=60).json()
        events = []
        with httpx.stream("POST", f"{s.url}/v1/generate", json={"prompt": prompt, "max_new_tokens": 8,
                                                                  "stream": True}, timeout=60) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
        sampled = [httpx.post(f"{s.url}/v1/generate", json={"prompt": prompt, "max_new_tokens": 8, "seed": 3,
                                                             "temperature": 1.0, "top_k": 20}).json()["text"]
                   for _ in range(2)]
        wrong = httpx.post(f"{s.url}/v1/predict", json={"inputs": ["x"]})
    # the ONNX graph's own greedy decode, by a loop over its decode step here (its float kernels differ from
    # PyTorch's in the last bits, so a near-tie could differ on another CPU: compare like with like)
    from toolkit.decode_steps import onnx_decoder_step
    from toolkit.variants import load_variants

    step = onnx_decoder_step(load_variants(lm_run.variants)["base"].onnx, 1)
    logits, state = step(np.array(ids, dtype=np.int64), None)
    onnx_tokens = []
    for _ in range(8):
        onnx_tokens.append(int(np.argmax(logits)))
        logits, state = step(np.array(onnx_tokens[-1:], dtype=np.int64), state)
    want_onnx = tokenizer.decode(onnx_tokens, skip_special_tokens=True)
    assert plain["text"] == want_onnx
    assert events[-1]["done"] and events[-1]["text"] == want_onnx
    assert "".join(e["text"] for e in events[:-1]) == want_onnx and len(events) == 9
    assert sampled[0] == sampled[1]  # a seed makes sampling repeatable
    assert wrong.status_code == 404 and "POST /v1/generate" in wrong.json()["error"]


def _start_cli(run: RunDir, *extra: str) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-m", "toolkit", "serve", str(run.path), "--port", "0", "--threads", "1",
                          *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    assert m, line + p.stderr.read()
    url = f"http://127.0.0.1:{m.group(1)}"
    _wait_ready(url)
    return p, url


def test_sigterm_under_load_finishes_in_flight_requests_and_exits_0(text_run):
    p, url = _start_cli(text_run, "--variant", "base", "--max-batch", "4")
    results: list[int] = []

    def client(i: int) -> None:
        for _ in range(30):
            try:
                results.append(httpx.post(f"{url}/v1/predict", json={"inputs": TEXTS * 8}, timeout=30).status_code)
            except httpx.ConnectError:
                return  # the server stopped accepting: a request never sent is not a failed one
    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=60)
    assert p.wait(timeout=60) == 0, p.stderr.read()
    assert results and set(results) == {200}, results


@pytest.mark.parametrize("args, message", [
    (["--variant", "int9"], "--variant 'int9': no such variant"),
    (["--runtime", "tensorrt"], "--runtime 'tensorrt' is not a runtime"),
    (["--runtime", "executorch", "--variant", "base"], "no file for it"),
    (["--max-batch", "0"], "--max-batch must be at least 1"),
])
def test_bad_command_lines_exit_2_with_one_line(text_run, args, message):
    p = subprocess.run([sys.executable, "-m", "toolkit", "serve", str(text_run.path), *args], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_the_listening_socket_is_tcp_so_responses_are_not_delayed():
    """asyncio sets TCP_NODELAY on accepted connections only when the listening socket says it is TCP; without it
    each keep-alive response waited for the client's delayed ACK (~40 ms)."""
    sock = listening_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        sock.listen()
        taken = sock.getsockname()[1]
        with pytest.raises(UserError, match=f"--port {taken}: cannot listen there"):
            listening_socket("127.0.0.1", taken)
    finally:
        sock.close()


def test_not_a_run_directory_exits_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "toolkit", "serve", str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "not a run directory" in p.stderr


def test_images_are_decoded_from_base64(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("serve-digits")
    run = _session(root, {"name": "serve-digits", "task": "image-classification",
                          "data": {"train": "builtin:digits", "limit": 200},
                          "model": {"source": "builtin:cnn-small"}, "train": {**TRAIN, "max_steps": 20}})
    from sklearn.datasets import load_digits

    digits = load_digits()
    encoded = []
    for img in digits.images[:3]:
        buf = io.BytesIO()
        Image.fromarray((img * 255 / 16).astype(np.uint8)).save(buf, "PNG")
        encoded.append(base64.b64encode(buf.getvalue()).decode())
    with Server(run, "base") as s:
        ok = httpx.post(f"{s.url}/v1/predict", json={"inputs": ["data:image/png;base64," + encoded[0], *encoded[1:]]})
        bad = httpx.post(f"{s.url}/v1/predict", json={"inputs": [encoded[0], base64.b64encode(b"no image").decode()]})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 3
    assert bad.status_code == 422 and bad.json()["field"] == "inputs.1"


def test_translation_greedy_equals_transformers_one_output_per_input(tmp_path_factory):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    root = tmp_path_factory.mktemp("serve-mt")
    rng = random.Random(2)
    pairs = {"a": "ein", "big": "grosser", "dog": "hund", "cat": "katze", "runs": "rennt", "sleeps": "schlaeft"}
    src = [" ".join(rng.choice(list(pairs)) for _ in range(rng.randint(2, 5))) for _ in range(240)]
    (root / "train.en").write_text("\n".join(src) + "\n", encoding="utf-8")
    (root / "train.de").write_text("\n".join(" ".join(pairs[w] for w in s.split()) for s in src) + "\n",
                                   encoding="utf-8")
    run = _session(root, {"name": "serve-mt", "task": "seq2seq",
                          "data": {"train": [str(root / "train.en"), str(root / "train.de")], "max_length": 16,
                                   "split": [0.8, 0.1, 0.1]},
                          "model": {"source": "builtin:bart-tiny", "vocab_size": 120},
                          "train": {**TRAIN, "max_steps": 30}})
    folder = run.variants / "base" / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    texts = ["a big dog runs", "cat sleeps"]
    want = []
    for t in texts:
        with torch.no_grad():
            out = model.generate(torch.tensor([tokenizer(t)["input_ids"]]), max_new_tokens=6, do_sample=False,
                                 num_beams=1)
        want.append(tokenizer.decode(out[0], skip_special_tokens=True))
    with Server(run, "base", runtime="pytorch") as s:  # PyTorch's kernels on both sides: exact comparison
        got = httpx.post(f"{s.url}/v1/translate", json={"inputs": texts, "max_new_tokens": 6}, timeout=60).json()
    assert [t["text"] for t in got["translations"]] == want
    with Server(run, "base") as s:  # ONNX Runtime: the encoder and the merged decoder with its cache
        got = httpx.post(f"{s.url}/v1/translate", json={"inputs": texts, "max_new_tokens": 6}, timeout=60).json()
        with httpx.stream("POST", f"{s.url}/v1/translate", json={"inputs": texts[:1], "max_new_tokens": 6,
                                                                   "stream": True}, timeout=60) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
        two = httpx.post(f"{s.url}/v1/translate", json={"inputs": texts, "stream": True})
    onnx_texts = [t["text"] for t in got["translations"]]
    assert len(onnx_texts) == 2 and all(t["tokens"] <= 6 for t in got["translations"])
    assert events[-1]["done"] and events[-1]["text"] == onnx_texts[0]
    assert two.status_code == 422 and two.json()["field"] == "stream"


def test_the_example_client_prints_one_prediction_per_input(text_run):
    client = Path(__file__).resolve().parents[2] / "examples" / "serve_client.py"
    with Server(text_run, "base") as s:
        p = subprocess.run([sys.executable, str(client), "predict", "great lovely film", "awful dull plot",
                            "--url", s.url], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    rows = [line.split("\t") for line in p.stdout.strip().splitlines()]
    assert [r[0] for r in rows] == ["positive", "negative"] and "variant base" in p.stderr


def test_the_tui_results_screen_starts_and_stops_a_server(text_run, tmp_path, monkeypatch):
    import asyncio

    from tui.app import ToolkitApp

    monkeypatch.setenv("EDGE_TOOLKIT_STATE", str(tmp_path / "state"))

    async def body() -> None:
        async def until(pilot, condition, what: str, timeout: float = 120) -> None:
            deadline = time.monotonic() + timeout
            while not condition():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await pilot.pause(0.1)

        app = ToolkitApp(text_run.path)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: type(app.screen).__name__ == "ResultsScreen", "results")
            screen = app.screen
            table = screen.query_one("#results-table")
            await until(pilot, lambda: table.row_count == 2, "rows")
            table.focus()
            table.move_cursor(row=0)  # base
            await pilot.press("v")
            await until(pilot, lambda: screen.server_url is not None, "the server's URL")
            url, child = screen.server_url, screen.server
            assert url in screen.sub_title and "serving base" in screen.sub_title
            assert httpx.get(f"{url}/v1/model").json()["variant"] == "base"
            await pilot.press("v")
            await until(pilot, lambda: not child.alive, "the server to stop")
            assert child.proc.wait() == 0 and screen.server_url is None
    asyncio.run(body())

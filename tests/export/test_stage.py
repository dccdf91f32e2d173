"""The export stage on tiny run directories: every variant to every format, each file verified on real eval
samples against PyTorch (INT8 ONNX variants against their parent, by agreement and cosine); export.json and the
manifest say so; a tampered export fails; a missing extra or a model that does not lower is reported."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from toolkit.errors import CheckFailed, UserError
from toolkit.events import Emitter
from toolkit.export.stage import run_export
from toolkit.rundir import load_manifest, sha256_path

HELPER = Path(__file__).resolve().parents[1] / "fixtures" / "export" / "stage_runs.py"


def _has_executorch() -> bool:
    return importlib.util.find_spec("executorch") is not None  # cheap: nothing imported at collection


needs_executorch = pytest.mark.skipif(not _has_executorch(), reason="ExecuTorch is an optional extra: "
                                      "pip install 'edge-toolkit[executorch]'")


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


def _events(run):
    return [json.loads(line) for line in run.events.read_text().splitlines()] if run.events.exists() else []


@pytest.mark.parametrize("which", ["digits", "text"])
def test_every_format_is_written_and_verified(which, request):
    recipe, run, results = request.getfixturevalue(which)
    base = results["base"]
    eval_rows = load_manifest(run)["data"]["sizes"]["eval"]
    assert [r["format"] for r in base] == load_helper().formats()  # .pte where the extra is installed
    for r in base:
        path = run.path / r["path"]
        assert path.is_file() and r["size_bytes"] == path.stat().st_size > 0
        assert r["verified"] is True, r
        c = r["check"]
        assert c["mode"] == "float" and c["atol"] == recipe.export.atol and c["max_abs_diff"] <= c["atol"]
        # real eval samples: as many as the recipe asks, or the whole eval split when it is smaller
        assert c["samples"] == min(recipe.export.verify_samples, eval_rows) > 0
    assert base[0]["opset"] == recipe.export.opset and base[1]["required_operators"].endswith(".config")
    assert (run.path / base[1]["required_operators"]).is_file()
    folder = run.variant("base")
    assert json.loads((folder / "export.json").read_text())["files"] == base
    # bundle: what a program needs beside the model
    assert {"labels.json", "preprocess.json"} <= {p.name for p in folder.iterdir()}
    if which == "text":
        assert (folder / "tokenizer.json").is_file()
    # the variant now names its ONNX graph
    assert json.loads((folder / "variant.json").read_text())["onnx"].endswith("model.onnx")


def test_manifest_records_verification_and_artifacts(digits):
    _, run, _ = digits
    m = load_manifest(run)
    assert m["verification"]["base"]["passed"] is True and m["verification"]["int8"]["passed"] is True
    arts = {a["name"]: a for a in m["artifacts"] if a["kind"] == "export"}
    assert {"base/model.onnx", "base/model.ort", "base/model.ts", "int8/model.onnx", "int8/model.ort"} <= set(arts)
    a = arts["base/model.ts"]
    assert a["stage"] == "export" and a["parent"] == "base" and a["verified"] is True
    assert a["sha256"] == sha256_path(run.path / a["path"])


def test_an_int8_onnx_variant_is_verified_against_its_parent(digits):
    recipe, run, results = digits
    by = {r["format"]: r for r in results["int8"]}
    for fmt in ("onnx", "ort"):
        c = by[fmt]["check"]
        assert by[fmt]["verified"] is True and c["mode"] == "lossy"
        assert c["agreement"] >= c["min_agreement"] == recipe.export.min_agreement
        assert c["cosine"] >= c["min_cosine"] == recipe.export.min_cosine
        assert 0 < c["max_abs_diff"]  # INT8 is not bit-exact: this really compared with the FP32 parent
    assert by["onnx"]["path"] == "variants/int8/model.onnx" and by["onnx"]["exporter"].startswith("compress stage")
    # no PyTorch model of its own: nothing to lower or trace, said so rather than failed
    assert by["torchscript"]["verified"] is None and by["torchscript"]["path"] is None
    assert "no PyTorch model" in by["torchscript"]["reason"]


@needs_executorch
def test_ort_and_pte_load_and_run_on_the_host(digits):
    import onnxruntime as ort
    import torch
    from executorch.runtime import Runtime

    _, run, _ = digits
    folder = run.variant("base")
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    ref = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})[0]
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.load_model_format", "ORT")
    mobile = ort.InferenceSession(str(folder / "model.ort"), opts, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(mobile.run(None, {"pixel_values": x})[0], ref, atol=1e-5)
    method = Runtime.get().load_program(str(folder / "model.pte")).load_method("forward")
    np.testing.assert_allclose(method.execute([torch.from_numpy(x)])[0].numpy(), ref, atol=1e-5)
    assert ref.shape == (3, 10)


def test_a_tampered_export_fails_verification(digits, tmp_path, monkeypatch):
    helper = load_helper()
    recipe, run, _ = digits
    copy = helper.copy_run(run, tmp_path / "run")
    import dataclasses

    import onnx
    from onnx import numpy_helper

    import toolkit.export.onnx as onnx_mod

    real = onnx_mod.export_onnx

    def tampered(*args, **kwargs):
        result = real(*args, **kwargs)
        model = onnx.load(str(result.path))
        w = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.5, w.name))  # what a bad copy would do
        onnx.save(model, str(result.path))
        return result

    monkeypatch.setattr(onnx_mod, "export_onnx", tampered)
    r = dataclasses.replace(recipe, export=dataclasses.replace(recipe.export, formats=["onnx", "ort"]))
    emitter = Emitter(copy.events, recipe.name)
    # in a session: flagged, the run goes on
    results = run_export(r, copy, emitter.for_stage("export"), strict=False)
    base = {x["format"]: x for x in results["base"]}
    assert base["onnx"]["verified"] is False and base["ort"]["verified"] is False
    assert base["onnx"]["check"]["max_abs_diff"] > recipe.export.atol
    assert load_manifest(copy)["verification"]["base"]["passed"] is False
    warnings = [e for e in _events(copy) if e["kind"] == "log" and e["level"] == "warning"]
    assert any("base: onnx variants/base/model.onnx FAILED verification" in e["message"] for e in warnings)
    # the explicit command: exit 3, naming the file and the measured difference
    with pytest.raises(CheckFailed, match=r"model\.onnx \(onnx\): max \|diff\| .* > atol 0\.0001") as err:
        run_export(r, copy, emitter.for_stage("export"), strict=True)
    assert err.value.exit_code == 3
    emitter.close()


def test_missing_executorch_is_skipped_in_a_session_and_an_error_when_asked(digits, tmp_path, monkeypatch):
    import dataclasses

    helper = load_helper()
    recipe, run, _ = digits
    copy = helper.copy_run(run, tmp_path / "run")
    r = dataclasses.replace(recipe, export=dataclasses.replace(recipe.export, formats=["onnx", "pte"]))
    monkeypatch.setitem(sys.modules, "executorch.exir", None)  # as if the extra were not installed
    emitter = Emitter(copy.events, recipe.name)
    results = run_export(r, copy, emitter.for_stage("export"), strict=False)
    pte = next(x for x in results["base"] if x["format"] == "pte")
    assert pte["verified"] is None and "pip install 'edge-toolkit[executorch]'" in pte["reason"]
    assert any(e["kind"] == "log" and e["level"] == "warning" and ".pte skipped" in e["message"]
               for e in _events(copy))
    with pytest.raises(UserError, match=r"needs ExecuTorch.*pip install 'edge-toolkit\[executorch\]'"):
        run_export(r, copy, emitter.for_stage("export"), strict=True)
    emitter.close()


@needs_executorch
def test_a_model_that_does_not_lower_is_reported_not_failed(digits, tmp_path, monkeypatch):
    import dataclasses

    import toolkit.export.executorch as et
    from toolkit.export.common import failed

    helper = load_helper()
    recipe, run, _ = digits
    copy = helper.copy_run(run, tmp_path / "run")
    monkeypatch.setattr(et, "export_pte", lambda *a, **k: failed(
        "pte", "language-modeling", "executorch", RuntimeError("Operator aten::foo is not supported")))
    r = dataclasses.replace(recipe, export=dataclasses.replace(recipe.export, formats=["pte"]))
    results = run_export(r, copy, Emitter(None, "x").for_stage("export"), strict=True)  # not a failure
    pte = results["base"][0]
    assert pte["verified"] is None and "did not lower" in pte["reason"] and "aten::foo" in pte["reason"]


def test_a_run_without_variants_is_a_user_error(digits, tmp_path):
    from toolkit.rundir import RunDir

    recipe, _, _ = digits
    with pytest.raises(UserError, match="no variants to export; train first"):
        run_export(recipe, RunDir(tmp_path / "empty"), Emitter(None, "x").for_stage("export"))

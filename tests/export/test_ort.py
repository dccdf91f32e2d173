"""ORT Mobile format: .ort files with their required-operators config load, run and match PyTorch; ops that
onnxruntime cannot run are named with the format."""
from __future__ import annotations

import pytest

from toolkit.errors import UserError
from toolkit.errors import UnsupportedOpError, unsupported_op
from toolkit.export.onnx import export_onnx
from toolkit.export.ort import export_ort, open_session
from toolkit.export.verify import verify


def _ops(config_path) -> set[str]:
    """Ops listed in a required-operators config ("domain;opset;Op1,Op2" lines)."""
    ops = set()
    for line in config_path.read_text().splitlines():
        if line and not line.startswith("#"):
            ops |= set(line.split(";")[2].split(","))
    return ops


def test_classifier_ort_loads_runs_and_matches(bert_dir, tmp_path, text_samples):
    onnx_result = export_onnx(bert_dir, tmp_path, "text-classification")
    r = export_ort(onnx_result)
    assert [p.name for p in r.files] == ["model.ort"] and r.format == "ort"
    config = r.extra["required_operators"]["model.ort"]
    assert config.name == "model.required_operators.config" and config.parent == tmp_path
    assert {"Gather", "Softmax"} <= _ops(config)
    assert r.inputs == onnx_result.inputs and r.opset == 18
    session = open_session(r.files[0])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    [res] = verify(r, bert_dir, text_samples)
    assert res["format"] == "ort" and res["verified"] is True and res["max_abs_diff"] < 1e-5


def test_cnn_ort_into_its_own_folder(cnn, cnn_example, tmp_path, image_samples):
    onnx_result = export_onnx(cnn, tmp_path / "onnx", "image-classification", example_inputs=cnn_example)
    r = export_ort(onnx_result, out_dir=tmp_path / "mobile", target_platform="arm")
    assert r.files == [tmp_path / "mobile" / "model.ort"]
    # the config lists the ops of the optimised graph (Conv + Clip fused), which a reduced build must carry
    assert {"FusedConv", "GlobalAveragePool", "Gemm"} <= _ops(tmp_path / "mobile" / "model.required_operators.config")
    [res] = verify(r, cnn, image_samples)
    assert res["verified"] is True and res["samples"] == 8 and res["max_abs_diff"] < 1e-5


@pytest.mark.parametrize("name, op", [("bogus_op.onnx", "BogusOp"), ("abs_bfloat16.onnx", "Abs"),
                                      ("bogus_domain.onnx", "com.example.bogus:Frobnicate")])
def test_an_op_the_runtime_cannot_run_is_named_with_the_format(fixtures, tmp_path, name, op):
    path = fixtures / "export" / name
    with pytest.raises(UnsupportedOpError) as err:
        open_session(path)
    assert err.value.op == op and err.value.exit_code == 2
    assert f"operator '{op}'" in str(err.value) and "onnxruntime" in str(err.value) and name in str(err.value)
    with pytest.raises(UnsupportedOpError, match=r"\(onnx\) cannot run operator"):
        export_ort(path, out_dir=tmp_path)
    assert not list(tmp_path.glob("*.ort"))


@pytest.mark.parametrize("message, op", [
    ("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for Abs(13) node with name 'n1'",
     "Abs"),
    ("Missing out variants: {'aten::_fft_r2c'}", "aten::_fft_r2c"),
    ("Operator torch._ops.aten.foo.default is not supported by the XNNPACK backend", "torch._ops.aten.foo.default"),
    ("shape mismatch in Gemm", None),
])
def test_op_names_are_parsed_from_runtime_messages(message, op):
    assert unsupported_op(message) == op


def test_missing_onnx_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such ONNX file"):
        export_ort(tmp_path / "nope.onnx")


def test_encoder_decoder_graphs_convert_with_one_combined_config(bart_dir, tmp_path, text_samples):
    r = export_ort(export_onnx(bart_dir, tmp_path, "seq2seq"))
    assert [p.name for p in r.files] == ["encoder_model.ort", "decoder_model_merged.ort"]
    combined = r.extra["required_operators_all"]
    assert combined == tmp_path / "required_operators.config"
    assert _ops(combined) == _ops(r.extra["required_operators"]["encoder_model.ort"]) | _ops(
        r.extra["required_operators"]["decoder_model_merged.ort"])
    assert "If" in _ops(combined)  # the merged decoder switches its cache branch with an If node
    samples = [dict(b, decoder_input_ids=b["input_ids"][:, :3]) for b in text_samples]
    results = verify(r, bart_dir, samples)
    assert [(x["role"], x["verified"]) for x in results] == [("encoder", True), ("decoder", True)]
    assert max(x["max_abs_diff"] for x in results) < 1e-5

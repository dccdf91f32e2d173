"""Deployable files and their verification.

onnx.py (optimum-onnx / torch.onnx), ort.py (ORT Mobile format + required-operators config), executorch.py (.pte,
XNNPACK), torchscript.py (.ts), bundle.py (tokenizer, labels, preprocessing beside the model), verify.py (each file in
its runtime vs PyTorch), common.py (ExportResult, the logits wrapper, op-error naming). Import the module you need:
this package imports nothing heavy by itself.
"""

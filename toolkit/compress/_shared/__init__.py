"""Helpers the compression methods share (not methods: the registry does not look in here).

``data``: the run's data encoded for a variant, and a graph's or module's validation metric on it; ``graphs``: the
parent's ONNX graph, which nodes INT8 reached, layer groups, ONNX Runtime's transformer fusions; ``finetune``: short
fine-tunes through the training loop; ``guard``: keeping the most sensitive layers uncompressed.
"""

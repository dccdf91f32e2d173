"""``toolkit tune``: search compression chains for a recipe's trained model, per target device.

- :mod:`toolkit.tune.space`: which steps fit the model, the task and the targets (students, structured sparsity,
  INT8 schemes in each target's format, FP16, INT4), each accepted by the step's own ``check_model``;
- :mod:`toolkit.tune.trial`: one trial: its chain through the compress stage into the run directory, its ONNX
  export, its validation quality and its latency per target (measured on the host, estimated elsewhere), cached
  in ``tune/trials/<hash>.json`` so a rerun repeats nothing;
- :mod:`toolkit.tune.search`: the budgeted search (cheap quantization trials first, then optuna's sampler over
  training chains), the Pareto front and winner per target, the eval-split confirmation, ``best-<target>.toml``.

It sits above the stages (it calls their libraries) and below the command line; nothing in a stage imports it.
"""

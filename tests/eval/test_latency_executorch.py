"""The executorch runner on a tiny .pte exported in the test (torch.export + XNNPACK), and .pte load errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.errors import UserError
from toolkit.eval.latency import benchmark

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"


@pytest.fixture(scope="module")
def tiny_pte(tmp_path_factory) -> Path:
    pytest.importorskip("executorch.runtime", reason="executorch is not installed (pip install 'edge-toolkit[executorch]')")
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb = torch.nn.Embedding(50, 32)
            self.fc = torch.nn.Linear(32, 3)

        def forward(self, input_ids, attention_mask):
            h = self.emb(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)  # (B, S, 32)
            return self.fc(h).mean(dim=1)  # (B, 3)

    args = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    program = to_edge_transform_and_lower(torch.export.export(Tiny().eval(), args),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    path = tmp_path_factory.mktemp("pte") / "tiny.pte"
    path.write_bytes(program.buffer)
    return path


def test_executorch_runner_runs_a_program_at_its_own_sizes(tiny_pte):
    r = benchmark(tiny_pte, threads=1, warmup=2, runs=20, vocab_size=50)
    assert r.runtime == "executorch" and r.threads == 1 and r.runs == 20
    assert (r.batch, r.seq_len) == (2, 8)  # a .pte has fixed sizes: the program's own
    assert r.input_shapes == {"input_0": [2, 8], "input_1": [2, 8]}
    assert 0 < r.min_ms <= r.p50_ms <= r.p99_ms <= r.max_ms < 1000
    assert r.throughput == pytest.approx(2 * 1000 / r.mean_ms)
    assert r.details["threadpool_threads"] == 1
    assert r.model_size_bytes == tiny_pte.stat().st_size


def test_executorch_input_names_and_a_contradicting_batch(tiny_pte):
    import numpy as np

    names = {"input_names": ["input_ids", "attention_mask"]}
    samples = {"input_ids": np.arange(24).reshape(3, 8) % 50, "attention_mask": np.ones((3, 8), np.int64)}
    with pytest.raises(UserError, match="fewer than one batch of 4"):
        benchmark(tiny_pte, inputs=samples, batch=4, options=names, runs=2)
    r = benchmark(tiny_pte, inputs=samples, batch=2, options=names, runs=3, threads=1)
    assert r.inputs == "real" and r.input_shapes["input_ids"] == [2, 8]
    with pytest.raises(UserError, match="fixed size 2 on axis 0, not 4; pass --batch 2"):
        benchmark(tiny_pte, batch=4, runs=2)


def test_a_program_with_bounded_dynamic_shapes_takes_any_size_up_to_its_bounds(tmp_path):
    pytest.importorskip("executorch.runtime", reason="executorch is not installed")
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torch.export import Dim

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 2)).eval()
    b, s = Dim("batch", min=1, max=16), Dim("seq", min=2, max=32)
    ep = torch.export.export(model, (torch.ones(2, 8, dtype=torch.long),), dynamic_shapes=({0: b, 1: s},))
    path = tmp_path / "dynamic.pte"
    path.write_bytes(to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)

    r = benchmark(path, batch=3, seq_len=12, runs=5, warmup=1, threads=1, vocab_size=50)
    assert (r.batch, r.seq_len) == (3, 12)
    r = benchmark(path, runs=5, warmup=1, threads=1, vocab_size=50)
    assert (r.batch, r.seq_len) == (1, 32)  # the default 64 does not fit: the program's largest size does
    with pytest.raises(UserError, match="takes at most 32 on axis 1, not 64; pass --seq-len 32 or less"):
        benchmark(path, seq_len=64, runs=2)


def test_synthetic_ids_beyond_a_small_vocabulary_say_what_to_pass(tiny_pte):
    with pytest.raises(UserError, match="failed on the first run with synthetic inputs.*pass --vocab-size"):
        benchmark(tiny_pte, runs=2, seed=3)


def test_a_pte_with_a_valid_header_but_no_program_is_a_user_error(tiny_pte, capfd):
    # header says ExecuTorch, body is empty: the reason comes from the runtime's C++ log, which must not reach
    # the terminal itself (the CLI promises one line; capfd sees file descriptor 2)
    capfd.readouterr()
    with pytest.raises(UserError, match=r"bench_truncated.pte: not a loadable ExecuTorch program \(\[mmap_data_loader"):
        benchmark(FIXTURES / "bench_truncated.pte", runs=2)
    assert capfd.readouterr().err == ""


def test_a_pte_without_the_header_fails_before_importing_executorch():
    with pytest.raises(UserError, match="bench_garbage.pte: not an ExecuTorch program"):
        benchmark(FIXTURES / "bench_garbage.pte", runs=2)

"""``toolkit tune``: bad inputs exit 2 with one line; the budget parser; the search space; the Pareto front."""
from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.__main__ import main
from toolkit.config import load_recipe
from toolkit.errors import UserError
from toolkit.targets import load_target
from toolkit.tune.result import pareto
from toolkit.tune.search import parse_budget
from toolkit.tune.space import chain_key, chain_tables, search_space

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tune"


@pytest.mark.parametrize("args, words", [
    (["digits.toml", "--target", "hots"], ["--target", "hots", "did you mean 'host'"]),
    (["digits.toml", "--target", "host", "--budget", "0"], ["--budget 0", "above zero"]),
    (["digits.toml", "--target", "host", "--budget", "soon"], ["--budget soon", "45m"]),
    (["onnx_source.toml", "--target", "host"], ["onnx_source.toml", "model.source", "ONNX file"]),
    (["untrained.toml", "--target", "host"], ["untrained.toml", "train.enabled = false"]),
])
def test_bad_input_exits_2_with_one_line(args, words, tmp_path, capsys):
    code = main(["tune", str(FIXTURES / args[0]), *args[1:], "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for w in words:
        assert w in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("2m", 120), ("45m", 2700), ("1.5h", 5400), ("3", 180)])
def test_budget_units(text, seconds):
    assert parse_budget(text) == seconds


def test_space_follows_the_model_and_the_targets():
    recipe = load_recipe(FIXTURES / "digits.toml")
    space = search_space(recipe, {"host": load_target("host"), "raspberry-pi-5": load_target("raspberry-pi-5")}, 0.01)
    # the CNN's students are narrower CNNs: the transformer's layer lists are refused by the step itself
    assert set(space.students) == {"widths-1/2", "widths-3/4", "widths-1/2-x3", "widths-3/4-x3"}
    assert space.students["widths-1/2-x3"]["epochs"] == 3 * recipe.train.epochs  # trained three times as long
    assert any("layers" in n and "widths" in n for n in space.notes)
    assert space.prunes  # structured levels the convnet adapter can remove
    # INT8 in both formats (the host's and the Pi's S8S8 QDQ), FP16 because the Pi 5 computes in it,
    # no INT4 (weight-only 4-bit is for token-by-token decoders)
    assert any(k.endswith("@host") for k in space.quants) and any(k.endswith("@raspberry-pi-5") for k in space.quants)
    assert "fp16" in space.quants and "int4" not in space.quants
    only_pi4 = search_space(recipe, {"raspberry-pi-4": load_target("raspberry-pi-4")}, 0.01)
    assert "fp16" not in only_pi4.quants  # the Pi 4 has no FP16 arithmetic


def test_chains_share_prefixes_and_hash_their_settings():
    recipe = load_recipe(FIXTURES / "digits.toml")
    space = search_space(recipe, {"host": load_target("host")}, 0.01)
    quant = next(iter(space.quants))
    a = chain_tables(space, "widths-1/2", "structured-0.2", quant)
    b = chain_tables(space, "widths-1/2", "structured-0.35", quant)
    assert a[0]["name"] == b[0]["name"] and a[0]["from"] == "base"  # one student variant for both
    assert a[1]["name"] != b[1]["name"] and a[1]["from"] == a[0]["name"]
    assert chain_key(a) != chain_key(b) and chain_key(a) == chain_key(chain_tables(space, "widths-1/2", "structured-0.2", quant))
    assert chain_tables(space, "none", "none", "none") == [] and chain_key([]) == "base"
    # the first rung of successive halving: every fine-tune at a third of its length, a chain of its own
    short = chain_tables(space, "widths-1/2-x3", "structured-0.2", quant, length=1 / 3, train=recipe.train)
    full = chain_tables(space, "widths-1/2-x3", "structured-0.2", quant)
    assert short[0]["epochs"] == pytest.approx(recipe.train.epochs)  # 3x the [train] epochs, cut to a third
    assert short[1]["epochs"] == pytest.approx(recipe.train.epochs / 3, abs=1e-3) and "epochs" not in full[1]
    assert short[2] == {**full[2], "name": short[2]["name"], "from": short[1]["name"]}  # quantization: no training
    assert chain_key(short) != chain_key(full)


def test_pareto_keeps_only_undominated_points():
    def point(key, value, speedup):
        return {"key": key, "validation": {"value": value}, "latency": {"host": {"speedup": speedup}}}

    pts = [point("base", 0.90, 1.0), point("fast", 0.88, 3.0), point("dominated", 0.87, 2.0), point("best", 0.91, 1.5)]
    assert [p["key"] for p in pareto(pts, "host", higher_is_better=True)] == ["fast", "best"]
    # lower is better (perplexity): the same numbers rank the other way
    assert [p["key"] for p in pareto(pts, "host", higher_is_better=False)] == ["fast", "dominated"]


def test_untrained_recipe_is_refused_by_the_library_too():
    from toolkit.tune.search import check_trainable

    with pytest.raises(UserError, match="train.enabled = false"):
        check_trainable(load_recipe(FIXTURES / "untrained.toml"))


def test_no_stage_imports_tune():
    """tune sits above the stages (ARCHITECTURE.md): it calls their libraries, none of them calls it."""
    import ast

    root = Path(__file__).resolve().parents[2] / "toolkit"
    stages = [*root.glob("train/**/*.py"), *root.glob("compress/**/*.py"), *root.glob("export/**/*.py"),
              *root.glob("eval/**/*.py"), root / "report.py", root / "session.py"]
    bad = []
    for path in stages:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith("toolkit.tune")]
    assert not bad, bad


def test_successive_halving_promotes_only_a_chain_whose_full_run_can_win():
    from toolkit.tune.search import promote

    def short(drop, speedup):
        return {"within_budget": drop <= 0.01, "validation": {"drop": drop},
                "latency": {"host": {"speedup": speedup}}}

    # within budget already: training longer cannot make it faster; slower than the best: cannot win
    assert promote([short(0.0, 5.0), short(0.05, 1.5)], best=2.0, primary="host", max_drop=0.01) is None
    # over budget and faster than the best: the nearest the budget goes on
    assert promote([short(0.20, 6.0), short(0.03, 4.0), short(0.0, 3.0)], best=2.0, primary="host",
                   max_drop=0.01) == 1

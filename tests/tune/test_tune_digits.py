"""``toolkit tune`` on the demo's digits CNN with a 15-second budget (about 30 s): the mechanics on a CNN — the base
and every cheap quantization trial recorded with its cost, a front per target, a winner (if any) faster than the
base and within --max-drop on the eval split, else a reason. The CNN is so small that its latency is mostly
overhead, so speed-ups are asserted on the tiny BERT (test_tune_search.py), not here."""
from __future__ import annotations

import json
from pathlib import Path

from toolkit.__main__ import main

RECIPE = Path(__file__).resolve().parents[1] / "fixtures" / "tune" / "digits.toml"


def test_tune_on_the_digits_cnn(tmp_path):
    run = tmp_path / "run"
    assert main(["tune", str(RECIPE), "--target", "host", "--target", "raspberry-pi-5", "--budget", "15s",
                 "--max-drop", "0.02", "--out", str(run), "--quiet"]) == 0
    report = json.loads((run / "tune" / "report.json").read_text())
    trials = {t["key"]: t for t in report["trials"]}
    assert trials["base"]["status"] == "done"
    cheap = [t for t in report["trials"] if t["params"].get("student") == "none"
             and t["params"].get("prune") == "none" and t["params"].get("quant") != "none"]
    # the cheap phase comes first: all of it, unless the budget ran out before (a machine under heavy load)
    assert len(cheap) == len(report["space"]["quants"]) or report["seconds"] >= 15
    assert cheap and not any(t.get("length", 1.0) < 1 for t in cheap)
    for t in report["trials"]:
        assert t["seconds"] is not None and (run / "variants" / t["variant"] / "variant.json").is_file()
        assert (run / "tune" / "trials" / f"{t['key']}.json").is_file()
    for target in ("host", "raspberry-pi-5"):
        front = json.loads((run / "tune" / f"front-{target}.json").read_text())
        assert front["front"], target
        win = report["winners"][target]
        if win.get("trial"):
            assert win["speedup"] > 1.0 and win["eval_drop"] <= 0.02
            assert (run / "tune" / f"best-{target}.toml").is_file()
        else:
            assert win["why"] and not (run / "tune" / f"best-{target}.toml").exists()

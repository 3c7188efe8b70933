"""benchmarks.tft builds every run from the recipes (the same composition and run builder as zoo.train) and
keeps its results as JSON beside the page rendered from them; the tests read the JSON."""

from __future__ import annotations

import json

import pytest


def bench(tmp_path, cache_dir, *args: str) -> dict:
    from benchmarks.tft import main

    results = tmp_path / "tft.json"
    assert main([*args, "--override", f"paths.cache_dir={cache_dir}", "--out", str(tmp_path / "out"),
                 "--results", str(results)]) == 0  # fmt: skip
    return json.loads(results.read_text())


def test_speed_part_composes_the_recipe_and_keeps_json_beside_the_page(tmp_path, cache_dir):
    page = tmp_path / "tft.md"
    page.write_text("# old\n\n## History (2026-12-01)\n\nkept | as | it is\n")
    results = bench(
        tmp_path, cache_dir, "--parts", "speed", "--recipes", "tft_small", "--steps", "2", "--rounds", "1"
    )
    r = results["speed"]["speed"]
    small = r["tft_small"]
    # The recipe's own network (conf/experiment/tft_small.yaml: hidden_size 8), not a copy of it.
    assert small["hidden_size"] == 8 and small["batch_size"] == 32
    for loop in ("stock", "fast_loader", "zoo", "compute_only"):
        assert small[f"{loop}_samples_per_s"] > 0, loop
    assert small["speedup"] == small["round_speedups"][0] > 0 and r["rounds"] == 1 and r["threads"] == 1
    assert r["command"].startswith("python -m benchmarks.tft --parts speed") and r["machine"] and r["date"]
    text = page.read_text()
    assert text.startswith("# TFT benchmarks") and text.endswith(
        "## History (2026-12-01)\n\nkept | as | it is\n"
    )


def test_a_part_keeps_the_others_and_a_key_keeps_a_variant(tmp_path, cache_dir):
    bench(tmp_path, cache_dir, "--parts", "speed", "--recipes", "tft_small", "--steps", "1", "--rounds", "1")
    results = bench(tmp_path, cache_dir, "--parts", "loader", "--recipes", "tft_small", "--loader-batches", "2",
                    "--key", "loader_small")  # fmt: skip
    assert set(results) == {"speed", "loader"} and set(results["loader"]) == {"loader_small"}
    loader = results["loader"]["loader_small"]
    assert loader["recipe"] == "tft_small" and loader["zoo_samples_per_s"] > 0 and loader["speedup"] > 0
    assert results["speed"]["speed"]["tft_small"]["speedup"] > 0  # the earlier part is still there


def test_overrides_reach_the_composed_runs(tmp_path, cache_dir):
    results = bench(tmp_path, cache_dir, "--parts", "speed", "--recipes", "tft_small", "--steps", "1", "--rounds",
                    "1", "--override", "model.net.hidden_size=12", "--override", "data.batch_size=16")  # fmt: skip
    small = results["speed"]["speed"]["tft_small"]
    assert small["hidden_size"] == 12 and small["batch_size"] == 16
    assert "--override model.net.hidden_size=12" in results["speed"]["speed"]["command"]


def test_calibration_goals_are_counted_from_the_metrics():
    from benchmarks.tft import goals

    m = {"cpu/coverage_p10_p90": 0.79, "cpu/coverage_p10_p90_raw": 0.55, "cpu/coverage_p2_p98": 0.95,
         "cpu/coverage_p2_p98_raw": 0.70, "cpu/pinball": 1.0, "cpu/pinball_raw": 1.5}  # fmt: skip
    assert goals(m, ["cpu"]) == {"met": 3, "checks": 3}
    assert goals(m, ["cpu"], "_rolling") == {"met": 0, "checks": 0}  # no walk-forward scores
    m |= {
        "cpu/coverage_p10_p90_rolling": 0.70,
        "cpu/coverage_p2_p98_rolling": 0.96,
        "cpu/pinball_rolling": 0.9,
    }
    assert goals(m, ["cpu"], "_rolling") == {"met": 2, "checks": 3}  # P10-P90 at 70 % is 10 points off


def test_unknown_part_is_refused(capsys):
    from benchmarks.tft import main

    with pytest.raises(SystemExit):
        main(["--parts", "speed,sped"])
    assert "unknown part(s) sped" in capsys.readouterr().err

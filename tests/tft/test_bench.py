"""benchmarks.tft's Alibaba sections: one per run, and the runs' MAE ratios side by side against the
``alibaba`` run (the one issue 13 quotes)."""

from __future__ import annotations


def run(cpu: float, memory: float, disk: float, **extra) -> dict:
    m = {"windows": 814.0}
    for t, v in (("cpu_percent", cpu), ("memory_percent", memory), ("disk_percent", disk)):
        m |= {f"{t}/tft/mae": v, f"{t}/snaive/mae": 1.0, f"{t}/naive/mae": 1.0, f"{t}/tft/rel_mae_vs_snaive": v,
              f"{t}/tft/mase": v, f"{t}/snaive/mase": 1.0, f"{t}/tft/coverage_p10_p90": 0.8,
              f"{t}/tft/coverage_p10_p90_raw": 0.61, f"{t}/tft/smape": 10.0}  # fmt: skip
    return {
        "metrics": m,
        "steps": 10,
        "epochs": 1,
        "fit_seconds": 1.0,
        "params": 5,
        "_env": {"device": "cpu"},
    } | extra


def test_alibaba_runs_render_their_own_sections_and_compare_with_the_reference():
    from benchmarks.tft import alibaba_markdown

    lines = alibaba_markdown(
        {
            "alibaba": run(0.84, 0.75, 0.78),
            "alibaba_b": run(0.86, 0.56, 0.78, seed=1, fused=True),
            "alibaba_c": run(0.83, 0.70, 0.77, seed=1, fused=True, dropout=0.2, ema=0.99),
            "alibaba_d": run(
                0.81, 0.50, 0.75, seed=2, fused=True, layout="channels", target_normalizer="group"
            ),
        }
    )
    text = "\n".join(lines)
    assert (
        text.count("## Alibaba 2018 sample") == 4
        and "[`alibaba_b`]" in text
        and "seed 1, fused forward, dropout 0.1, no EMA, joint, group" in text
        and "seed 2, fused forward, dropout 0.1, no EMA, channels, group" in text
        and "814 windows (each window one channel: 3 per origin)" in text
    )
    # the raw band's coverage, not the calibrated one (fitted on these very windows)
    assert "| cpu_percent | 0.860 | 1.000 | 1.000 | **0.860** | 0.860 | 1.000 | 0.61 | 10.0 |" in text
    assert (
        "| `alibaba_b` | 1 | fused | dropout 0.1, no EMA | joint, group | cpu | 0.860 | 0.560 | 0.780 | 0.733 | 2 of 3 |"
        in text
    )
    assert (
        "| `alibaba_c` | 1 | fused | dropout 0.2, EMA 0.99 | joint, group | cpu | 0.830 | 0.700 | 0.770 | 0.767 | 3 of 3 |"
        in text
    )
    assert (
        "| `alibaba_d` | 2 | fused | dropout 0.1, no EMA | channels, group | cpu | 0.810 | 0.500 | 0.750 |"
        in text
    )
    assert "**NOT met** (worst 0.860" in text
    single = "\n".join(alibaba_markdown({"alibaba": run(0.84, 0.75, 0.78)}))
    assert "run by run" not in single and "**met** (worst 0.840" in single


def test_the_speed_benchmark_times_the_recipes_networks(compose):
    """The speed part builds its networks by hand; they must be the recipes' (conf/experiment/tft_*.yaml)."""
    from benchmarks.tft import SPEED_RECIPES

    for recipe, r in SPEED_RECIPES.items():
        model = compose(f"experiment=tft_{recipe}").model
        assert {k: model.net[k] for k in r["net"]} == r["net"], recipe
        data = compose(f"experiment=tft_{recipe}").data
        assert data.channel_independent == r["channel_independent"], recipe
        assert model.optim.lr == r["lr"], recipe


def test_seed_groups_report_the_point_chosen_on_validation_and_both_means():
    from benchmarks.tft import seeds_markdown

    def etth1(seed, val_median, val_mean, test_median, test_mean, group="g"):
        return {"group": group, "seed": seed, "steps": 100, "point": "median",
                "val_metrics": {"all/tft/mse": val_median, "all/tft_mean/mse": val_mean},
                "metrics": {"all/tft/mse": test_median, "all/tft_mean/mse": test_mean}}  # fmt: skip

    text = "\n".join(
        seeds_markdown(
            {
                "a": etth1(1, 0.70, 0.69, 0.40, 0.39),  # the mean of the quantiles wins on validation
                "b": etth1(2, 0.68, 0.71, 0.37, 0.30),  # the median does, however good the mean's test is
                "c": etth1(3, 0.72, 0.73, 0.38, 0.36),
                "other": etth1(1, 0.5, 0.5, 0.5, 0.5, group="h"),
            }
        )
    )
    assert text.count("## ETTh1 over seeds") == 2
    assert "| 1 | `a` | 100 | mean of the quantiles | 0.690 | 0.390 |" in text
    assert "| 2 | `b` | 100 | median | 0.680 | 0.370 |" in text
    # (0.39 + 0.37 + 0.38) / 3 and (0.69 + 0.68 + 0.72) / 3
    assert "**0.380** (goal <= 0.385 over 3 seeds: **met**); mean validation MSE 0.6967." in text
    assert "over 1 seeds: **0.500** (goal <= 0.385 over 3 seeds: **NOT met**)" in text


def speed(threads: int, alibaba: float) -> dict:
    q = {"stock_samples_per_s": 500.0, "fast_loader_samples_per_s": 550.0, "zoo_samples_per_s": 500.0 * alibaba,
         "compute_only_samples_per_s": 510.0 * alibaba, "speedup": alibaba, "round_speedups": [alibaba - 0.02, alibaba + 0.03],
         "batch_size": 128}  # fmt: skip
    return {"device": "cpu", "steps": 40, "rounds": 5, "threads": threads, "fused_adam": True, "alibaba": q,
            "_env": {"device": "cpu"}}  # fmt: skip


def test_speed_runs_at_two_thread_counts_get_a_table_each_and_the_loops_are_described_once():
    from benchmarks.tft import markdown

    text = markdown({"speed_2threads": speed(2, 1.65), "speed": speed(1, 1.57)})
    one, two = text.index("5 rounds, 1 torch threads"), text.index("5 rounds, 2 torch threads")
    assert one < two and text.count("Same weights and batches in every loop") == 1
    assert "**1.57x** (1.55–1.60)" in text[one:two] and "**1.65x** (1.63–1.68)" in text[two:]


def test_merge_without_files_is_an_error_not_a_benchmark_run(capsys):
    from benchmarks.tft import main

    assert main(["--merge"]) == 2
    assert "--merge needs the JSON files" in capsys.readouterr().err

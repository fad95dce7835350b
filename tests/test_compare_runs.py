"""scripts/compare_runs.py on small runs logged here through verl's own file and tensorboard loggers."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_runs.py"
_spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
assert _spec is not None and _spec.loader is not None
compare_runs = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = compare_runs  # dataclasses look their module up there
_spec.loader.exec_module(compare_runs)

STEPS = range(1, 31)
GTPO_KEYS = ("gtpo/protected_token_frac", "gtpo/amplified_token_frac", "gtpo/filtered_completion_frac",
             "gtpo/mean_completion_entropy", "gtpo/initial_entropy")


def gtpo_metrics(step: int) -> dict[str, float]:
    metrics = {"critic/score/mean": step / 100, "actor/entropy": 1.0 - step / 60, "response_length/mean": 200.0 + step,
               "training/global_step": float(step), **{key: 0.1 for key in GTPO_KEYS}}
    if step % 10 == 0:  # validation every 10 steps, in the same step's metrics as verl logs it
        metrics["val-core/gsm8k/acc/mean@1"] = 0.5 + step / 100
    return metrics


def grpo_metrics(step: int) -> dict[str, float]:
    metrics = {"critic/score/mean": 0.5, "actor/entropy": 1.0, "response_length/mean": 300.0 - step}
    if step % 10 == 0:
        metrics["val-core/gsm8k/acc/mean@1"] = 0.6
        metrics["val-core/math/acc/mean@1"] = 0.3
    return metrics


@pytest.fixture(scope="module")
def logged_runs(tmp_path_factory) -> tuple[Path, Path]:
    """A GTPO run logged by verl's file logger and a GRPO run by its tensorboard logger, as recipe run folders."""
    pytest.importorskip("verl")
    pytest.importorskip("tensorboard")
    from verl.utils.tracking import Tracking

    root = tmp_path_factory.mktemp("runs")
    gtpo_dir, grpo_dir = root / "gtpo_gsm8k", root / "grpo_gsm8k"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VERL_FILE_LOGGER_PATH", str(gtpo_dir / "metrics.jsonl"))
        patch.setenv("TENSORBOARD_DIR", str(grpo_dir / "tensorboard"))
        gtpo_dir.mkdir()
        for backend, run_dir, metrics in (("file", gtpo_dir, gtpo_metrics), ("tensorboard", grpo_dir, grpo_metrics)):
            tracking = Tracking("gtpo", run_dir.name, default_backend=[backend])
            for step in STEPS:
                tracking.log(metrics(step), step=step)
            tracking.finish()
    return gtpo_dir, grpo_dir


def test_table_and_plot_from_both_logger_formats(logged_runs, tmp_path):
    gtpo_dir, grpo_dir = logged_runs
    out = tmp_path / "out"
    rows = compare_runs.main([str(gtpo_dir), str(grpo_dir), "--labels", "GTPO", "GRPO", "--output-dir", str(out),
                              "--tail", "3"])
    table = {row["metric"]: row for row in rows}
    assert list(table) == [
        "critic/score/mean", "val-core/gsm8k/acc/mean@1", "val-core/math/acc/mean@1", "actor/entropy",
        "response_length/mean", *sorted(GTPO_KEYS),
    ]
    # Final = mean of the last 3 points. GTPO reward: (0.28 + 0.29 + 0.30) / 3 = 0.29; GRPO: 0.5.
    assert table["critic/score/mean"] == {
        "metric": "critic/score/mean", "up to step": "30",
        "GTPO mean": "0.29", "GTPO 95% CI": "n = 1: no CI", "GTPO runs": "1/1",
        "GRPO mean": "0.5", "GRPO 95% CI": "n = 1: no CI", "GRPO runs": "1/1",
        "GRPO - GTPO": "+0.21", "GRPO - GTPO 95% CI": "n = 1: no CI",
    }
    # GTPO accuracy at steps 10, 20, 30: 0.6, 0.7, 0.8 -> 0.7; GRPO 0.6.
    accuracy = table["val-core/gsm8k/acc/mean@1"]
    assert (accuracy["GTPO mean"], accuracy["GRPO mean"], accuracy["GRPO - GTPO"]) == ("0.7", "0.6", "-0.1")
    # Response length: GTPO 200 + (28, 29, 30) -> 229; GRPO 300 - (28, 29, 30) -> 271.
    assert table["response_length/mean"]["GRPO - GTPO"] == "+42"
    protected = table["gtpo/protected_token_frac"]
    assert (protected["GRPO mean"], protected["GRPO runs"], protected["GRPO - GTPO"]) == ("not logged", "0/1", "")
    assert table["val-core/math/acc/mean@1"]["GTPO mean"] == "not logged"

    image = out / "comparison.png"
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    height, width, _ = imread(image).shape
    assert width > 1000 and height > 1000  # 3 columns x 4 rows of panels for the 10 metrics
    markdown = (out / "comparison.md").read_text(encoding="utf-8").splitlines()
    assert markdown[0].startswith("| metric | up to step | GTPO mean | GTPO 95% CI | GTPO runs | GRPO mean |")
    assert len(markdown) == 2 + 10
    csv_lines = (out / "comparison.csv").read_text(encoding="utf-8").splitlines()
    assert csv_lines[1].startswith("critic/score/mean,30,0.29,n = 1: no CI,1/1,0.5,")


def test_run_sources_and_default_labels(logged_runs):
    gtpo_dir, grpo_dir = logged_runs
    by_folder, by_file = compare_runs.load_run(gtpo_dir), compare_runs.load_run(gtpo_dir / "metrics.jsonl")
    assert by_folder.label == by_file.label == "gtpo_gsm8k"
    assert by_folder.series == by_file.series
    assert by_folder.series["critic/score/mean"][:2] == [(1, 0.01), (2, 0.02)]
    events = next((grpo_dir / "tensorboard").glob("events.out.tfevents.*"))
    from_events = compare_runs.load_run(events)
    assert from_events.label == "grpo_gsm8k"
    assert from_events.series == compare_runs.load_run(grpo_dir).series
    assert from_events.series["response_length/mean"][-1] == (30, 270.0)


def test_extra_metric_and_unknown_metric(logged_runs, tmp_path):
    gtpo_dir, grpo_dir = logged_runs
    rows = compare_runs.main([str(gtpo_dir), str(grpo_dir), "--metric", "training/global_step",
                              "--output-dir", str(tmp_path)])
    assert rows[-1]["metric"] == "training/global_step" and rows[-1]["grpo_gsm8k mean"] == "not logged"
    with pytest.raises(ValueError, match=r"\['actor/entropy_typo'\] logged by no run"):
        compare_runs.main([str(gtpo_dir), str(grpo_dir), "--metric", "actor/entropy_typo",
                           "--output-dir", str(tmp_path)])


def test_later_line_wins_a_repeated_step(tmp_path):
    # A resumed run logs some steps again; non-numeric values are skipped.
    lines = [{"step": 1, "data": {"actor/entropy": 0.9}}, {"step": 2, "data": {"actor/entropy": 0.8, "note": "x"}},
             {"step": 2, "data": {"actor/entropy": 0.7, "flag": True}}]
    path = tmp_path / "resumed.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8")
    run = compare_runs.load_run(path)
    assert run.label == "resumed"
    assert run.series == {"actor/entropy": [(1, 0.9), (2, 0.7)]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"step": 1, "data": {"a": 1}}\nnot json\n', r"bad\.jsonl:2: not valid JSON"),
        ('{"step": "one", "data": {"a": 1}}\n', r"bad\.jsonl:1: expected \{\"step\""),
        ('{"step": 1, "data": {"note": "text"}}\n', r"no numeric metrics"),
    ],
)
def test_malformed_metrics_files(tmp_path, text, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        compare_runs.load_run(path)


def test_unusable_run_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        compare_runs.load_run(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no metrics.jsonl"):
        compare_runs.load_run(empty)
    for name in ("a.jsonl", "b.jsonl"):
        (empty / name).write_text('{"step": 1, "data": {"x": 1}}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="several .jsonl files"):
        compare_runs.load_run(empty)


def test_same_labels_are_refused(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text('{"step": 1, "data": {"actor/entropy": 1}}\n',
                                                       encoding="utf-8")
    with pytest.raises(SystemExit):
        compare_runs.main([str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "x", "x"])


def test_moving_average_against_naive_reference():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    for window in (1, 2, 3, 10):
        naive = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                 for i in range(len(values))]
        assert compare_runs.moving_average(values, window) == pytest.approx(naive)


def log_run(run_dir: Path, backend: str, metrics_by_step: dict[int, dict[str, float]]) -> Path:
    """One run logged through verl's own Tracking (file logger or tensorboard) into a recipe-style run folder."""
    from verl.utils.tracking import Tracking

    run_dir.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VERL_FILE_LOGGER_PATH", str(run_dir / "metrics.jsonl"))
        patch.setenv("TENSORBOARD_DIR", str(run_dir / "tensorboard"))
        tracking = Tracking("gtpo", run_dir.name, default_backend=[backend])
        for step, metrics in metrics_by_step.items():
            tracking.log(metrics, step=step)
        tracking.finish()
    return run_dir


@pytest.fixture(scope="module")
def seeded_runs(tmp_path_factory) -> dict[str, list[Path]]:
    """Three seeds per arm, in both logger formats. Per seed a constant reward (so its final value is known
    whatever the tail), and a response length of 100 + step. GTPO's seed 2 stops at step 20; GRPO's seed 1
    logs only even steps and its seed 2 only odd ones, so the arms' steps do not line up."""
    pytest.importorskip("verl")
    pytest.importorskip("tensorboard")
    root = tmp_path_factory.mktemp("seeds")
    gtpo_reward, grpo_reward = {0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.45, 2: 0.5}
    gtpo_steps = {0: range(1, 31), 1: range(1, 31), 2: range(1, 21)}
    grpo_steps = {0: range(1, 31), 1: range(2, 31, 2), 2: range(1, 31, 2)}
    runs: dict[str, list[Path]] = {"GTPO": [], "GRPO": []}
    for seed in range(3):
        backend = "file" if seed != 1 else "tensorboard"
        runs["GTPO"].append(log_run(root / f"gtpo_paper_gsm8k_s{seed}", backend, {
            step: {"critic/score/mean": gtpo_reward[seed], "response_length/mean": 100.0 + step,
                   "gtpo/protected_token_frac": 0.1 * (seed + 1)} for step in gtpo_steps[seed]}))
        runs["GRPO"].append(log_run(root / f"grpo_paper_gsm8k_s{seed}", backend, {
            step: {"critic/score/mean": grpo_reward[seed], "response_length/mean": 100.0 + step}
            for step in grpo_steps[seed]}))
    return runs


def arm_args(label: str, paths: list[Path]) -> list[str]:
    return ["--arm", label, *map(str, paths)]


def test_seeds_give_mean_ci_and_paired_difference(seeded_runs, tmp_path):
    out = tmp_path / "out"
    rows = compare_runs.main([*arm_args("GTPO", seeded_runs["GTPO"]), *arm_args("GRPO", seeded_runs["GRPO"]),
                              "--output-dir", str(out), "--tail", "1"])
    table = {row["metric"]: row for row in rows}
    reward = table["critic/score/mean"]
    # GTPO finals 0.5, 0.6, 0.7: mean 0.6, sd 0.1, t(0.975, 2) = 4.302653, half = 4.302653 * 0.1 / sqrt(3)
    # = 0.248414 -> [0.3516, 0.8484]. GRPO finals 0.4, 0.45, 0.5: mean 0.45, half 0.124207 -> [0.3258, 0.5742].
    assert (reward["GTPO mean"], reward["GTPO 95% CI"], reward["GTPO runs"]) == ("0.6", "[0.3516, 0.8484]", "3/3")
    assert (reward["GRPO mean"], reward["GRPO 95% CI"]) == ("0.45", "[0.3258, 0.5742]")
    # Paired by seed, GRPO - GTPO: -0.1, -0.15, -0.2: mean -0.15, sd 0.05, half 0.124207 -> [-0.2742, -0.02579].
    assert (reward["GRPO - GTPO"], reward["GRPO - GTPO 95% CI"]) == ("-0.15", "[-0.2742, -0.02579] paired, n = 3")
    # Every run is cut at step 20, where GTPO's seed 2 stopped: GTPO's seeds end at 100 + 20; GRPO's seed 1
    # (even steps) at 120 and seeds 0 and 2 (odd steps: 19) at 120 and 119. Without the cut GTPO's seeds 0, 1
    # would end at 130.
    length = table["response_length/mean"]
    assert length["up to step"] == "20"
    assert (length["GTPO mean"], length["GTPO 95% CI"]) == ("120", "[120, 120]")
    assert length["GRPO mean"] == f"{(120 + 120 + 119) / 3:.4g}"
    # A metric one arm never logged.
    protected = table["gtpo/protected_token_frac"]
    assert (protected["up to step"], protected["GTPO mean"], protected["GRPO runs"]) == ("20", "0.2", "0/3")
    assert protected["GRPO - GTPO"] == ""
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_seed_per_arm_has_no_ci(seeded_runs, tmp_path):
    rows = compare_runs.main([*arm_args("GTPO", seeded_runs["GTPO"][:1]), *arm_args("GRPO", seeded_runs["GRPO"][:1]),
                              "--output-dir", str(tmp_path)])
    reward = rows[0]
    assert (reward["GTPO mean"], reward["GTPO 95% CI"], reward["GTPO runs"]) == ("0.5", "n = 1: no CI", "1/1")
    assert (reward["GRPO - GTPO"], reward["GRPO - GTPO 95% CI"]) == ("-0.1", "n = 1: no CI")


def test_difference_without_matching_seeds_has_no_ci(seeded_runs, tmp_path):
    gtpo, grpo = seeded_runs["GTPO"], seeded_runs["GRPO"]
    rows = compare_runs.main([*arm_args("GTPO", gtpo[:2]), *arm_args("GRPO", [grpo[0], grpo[2]]),
                              "--output-dir", str(tmp_path), "--confidence", "0.9"])
    reward = rows[0]
    # GTPO 0.5, 0.6: mean 0.55, sd 0.0707107, t(0.95, 1) = 6.313752, half = 0.315688 -> [0.2343, 0.8657].
    assert reward["GTPO 90% CI"] == "[0.2343, 0.8657]"
    # Seeds {0, 1} against {0, 2}: the difference of the means, 0.45 - 0.55, and no interval.
    assert (reward["GRPO - GTPO"], reward["GRPO - GTPO 90% CI"]) == ("-0.1", "seeds differ: no CI")


def test_three_arms_and_runs_without_seed_names(seeded_runs, tmp_path):
    # Copies under names without a seed: the arm still gets its interval, the difference gets none.
    unnamed = []
    for index, run in enumerate(seeded_runs["GRPO"]):
        unnamed.append(tmp_path / f"grpo_no_kl_{'abc'[index]}")
        shutil.copytree(run, unnamed[-1])
    rows = compare_runs.main([*arm_args("GTPO", seeded_runs["GTPO"]), *arm_args("GRPO", seeded_runs["GRPO"]),
                              *arm_args("GRPO-no-KL", unnamed), "--output-dir", str(tmp_path / "out")])
    reward = rows[0]
    assert reward["GRPO-no-KL 95% CI"] == "[0.3258, 0.5742]"
    assert reward["GRPO-no-KL - GTPO"] == "-0.15"
    assert reward["GRPO-no-KL - GTPO 95% CI"] == "no seeds in run names: no CI"
    assert reward["GRPO - GTPO 95% CI"].endswith("paired, n = 3")


def test_seed_band_on_steps_that_do_not_line_up():
    # Seed a: y = x at steps 0, 10, 20; seed b: y = x + 2 at steps 5, 15, 25. Common range [5, 20], grid = the
    # union of their steps inside it: 5, 10, 15, 20. Interpolated: a = x, b = x + 2 -> mean x + 1,
    # sd sqrt(2), half = t(0.975, 1) * sqrt(2) / sqrt(2) = 12.706205.
    a = [(0, 0.0), (10, 10.0), (20, 20.0)]
    b = [(5, 7.0), (15, 17.0), (25, 27.0)]
    band = compare_runs.seed_band([a, b], smooth=1, confidence=0.95)
    assert band is not None
    grid, mean, low, high = band
    assert grid.tolist() == [5.0, 10.0, 15.0, 20.0]
    assert mean.tolist() == pytest.approx([6.0, 11.0, 16.0, 21.0])
    assert (mean - low).tolist() == pytest.approx([12.706205] * 4, abs=1e-6)
    assert (high - mean).tolist() == pytest.approx([12.706205] * 4, abs=1e-6)
    assert compare_runs.seed_band([[(0, 1.0), (1, 1.0)], [(5, 1.0), (6, 1.0)]], 1, 0.95) is None  # no shared step


@pytest.mark.parametrize(
    ("name", "seed"),
    [("gtpo_paper_gsm8k_s0", 0), ("grpo-seed12", 12), ("seed3", 3), ("run_s_7", 7), ("Qwen2.5-3B_fsdp", None),
     ("gtpo_gsm8k", None), ("gpus8", None)],
)
def test_seed_of_run_names(name, seed):
    assert compare_runs.seed_of(name) == seed


def test_bad_arms(seeded_runs, tmp_path):
    gtpo, grpo = (list(map(str, seeded_runs[arm])) for arm in ("GTPO", "GRPO"))
    out = ["--output-dir", str(tmp_path)]
    for argv in (["--arm", "GTPO", "--arm", "GRPO", *grpo],  # an arm without runs
                 ["--arm", "GTPO", *gtpo],  # one arm only
                 ["--arm", "X", *gtpo, "--arm", "X", *grpo],  # the same label twice
                 [gtpo[0], "--arm", "GRPO", *grpo, "--arm", "GTPO", *gtpo],  # both forms at once
                 [gtpo[0]]):  # one positional run
        with pytest.raises(SystemExit):
            compare_runs.main([*argv, *out])
    with pytest.raises(ValueError, match="is in both arm 'A' and arm 'B'"):
        compare_runs.main(["--arm", "A", gtpo[0], "--arm", "B", gtpo[0], *out])
    with pytest.raises(ValueError, match="lists the same run twice"):
        compare_runs.main(["--arm", "A", gtpo[0], gtpo[0], "--arm", "B", grpo[0], *out])
    copy = tmp_path / "elsewhere" / Path(gtpo[0]).name
    shutil.copytree(gtpo[0], copy)
    with pytest.raises(ValueError, match="two runs carry the same seed"):
        compare_runs.main(["--arm", "A", gtpo[0], str(copy), "--arm", "B", grpo[0], *out])
    with pytest.raises(SystemExit):
        compare_runs.main(["--arm", "A", gtpo[0], "--arm", "B", grpo[0], "--confidence", "95", *out])

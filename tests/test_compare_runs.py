"""scripts/compare_runs.py on small runs logged here through verl's own file and tensorboard loggers."""

from __future__ import annotations

import importlib.util
import json
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
    assert table["critic/score/mean"] == {"metric": "critic/score/mean", "GTPO final": "0.29", "GTPO points": "30",
                                          "GRPO final": "0.5", "GRPO points": "30", "GRPO - GTPO": "+0.21"}
    # GTPO accuracy at steps 10, 20, 30: 0.6, 0.7, 0.8 -> 0.7; GRPO 0.6.
    accuracy = table["val-core/gsm8k/acc/mean@1"]
    assert (accuracy["GTPO final"], accuracy["GTPO points"], accuracy["GRPO final"]) == ("0.7", "3", "0.6")
    assert accuracy["GRPO - GTPO"] == "-0.1"
    # Response length: GTPO 200 + (28, 29, 30) -> 229; GRPO 300 - (28, 29, 30) -> 271.
    assert table["response_length/mean"]["GRPO - GTPO"] == "+42"
    assert table["gtpo/protected_token_frac"]["GRPO final"] == "not logged"
    assert table["val-core/math/acc/mean@1"]["GTPO final"] == "not logged"

    image = out / "comparison.png"
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    height, width, _ = imread(image).shape
    assert width > 1000 and height > 1000  # 3 columns x 4 rows of panels for the 10 metrics
    markdown = (out / "comparison.md").read_text(encoding="utf-8").splitlines()
    assert markdown[0].startswith("| metric | GTPO final | GTPO points | GRPO final |") and len(markdown) == 2 + 10
    assert (out / "comparison.csv").read_text(encoding="utf-8").splitlines()[1].startswith("critic/score/mean,0.29,")


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
    assert rows[-1]["metric"] == "training/global_step" and rows[-1]["grpo_gsm8k final"] == "not logged"
    with pytest.raises(ValueError, match=r"\['actor/entropy_typo'\] logged by neither run"):
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

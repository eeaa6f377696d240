"""Jobs' progress reports (the contract's progress.json): read strictly, shown in status."""

from __future__ import annotations

import json

from substratus.api.kinds import JobProgress
from substratus.cli.output import progress_text
from substratus.core.observed import JobState, Observed, Phase
from substratus.core.progress import MAX_PROGRESS_BYTES, parse_progress
from substratus.core.reconcile import decide
from tests.unit.test_reconcile import BASE, make


def test_reports_are_read_strictly() -> None:
    doc = {"percent": 42, "step": 42, "total": 100, "etaSeconds": 95, "metrics": {"loss": 1.5}}
    assert parse_progress(json.dumps(doc).encode()) == JobProgress(
        percent=42, step=42, total=100, etaSeconds=95, metrics={"loss": 1.5}
    )
    # Numbers only in metrics (a NaN or a string is dropped); unknown fields ignored.
    odd = {"metrics": {"loss": float("nan"), "note": "x", "lr": 1e-4}, "extra": 1}
    assert parse_progress(json.dumps(odd).encode()) == JobProgress(metrics={"lr": 1e-4})
    for bad in (b"{", b"[1]", b'{"step": "many"}', b" " * (MAX_PROGRESS_BYTES + 1)):
        assert parse_progress(bad) is None


def test_the_status_shows_the_report_and_keeps_the_last_one() -> None:
    report = JobProgress(percent=50, step=4, total=8, etaSeconds=30, metrics={"loss": 2.0})
    obj = make("Model", BASE)
    running = JobState(1, Phase.RUNNING, progress=report)
    d = decide(obj, Observed(now=0, job=running))
    assert d.status.progress == report  # type: ignore[attr-defined]
    # A decision without a new report keeps the one there (the job ended, its file is gone).
    obj = make("Model", BASE, status=d.status.model_dump(by_alias=True, exclude_none=True))
    d = decide(obj, Observed(now=0, job=JobState(1, Phase.RUNNING)))
    assert d.status.progress == report  # type: ignore[attr-defined]
    # A new generation starts from nothing.
    newer = make("Model", BASE, generation=2, status=obj.status.model_dump(by_alias=True))
    assert decide(newer, Observed(now=0, job=running)).status.progress is None  # type: ignore[attr-defined]


def test_progress_in_a_few_words() -> None:
    status = {"progress": {"percent": 42.0, "step": 420, "total": 1000, "etaSeconds": 95,
                           "metrics": {"loss": 1.7312, "learning_rate": 0.0002}}}  # fmt: skip
    assert progress_text(status) == "42% eta 1m35s loss 1.731"
    assert progress_text(status, full=True) == (
        "42% 420/1000 eta 1m35s loss 1.731 learning_rate 0.0002"
    )
    assert progress_text({**status, "ready": True}) == "42% loss 1.731"  # no ETA once done
    assert progress_text({}) == ""


def test_the_curve_in_the_terminal() -> None:
    from substratus.cli.output import describe, sparkline

    assert sparkline([3.0, 2.0, 1.0, 0.5]) == "█▅▂▁"
    assert sparkline([1.0, 1.0]) == "▁▁"
    assert len(sparkline([float(i) for i in range(500)], width=40)) == 40
    doc = {"history": [2.0, "x", float("nan"), 1.0, True], "metrics": {"loss": 1.0}}
    assert parse_progress(json.dumps(doc).replace("NaN", "NaN").encode()) == JobProgress(
        history=[2.0, 1.0], metrics={"loss": 1.0}
    )
    obj = {
        "kind": "Model",
        "metadata": {"name": "m", "namespace": "default"},
        "spec": {},
        "status": {
            "ready": True,
            "url": "file:///a/m/g1/",
            "files": ["loss.png", "model.safetensors"],
            "progress": {"percent": 100.0, "history": [2.0, 1.5, 1.0], "metrics": {"loss": 1.0}},
        },
    }
    text = describe(obj)
    assert "  curve:      █▅▁  2 -> 1" in text
    assert "  loss.png:   file:///a/m/g1/loss.png" in text

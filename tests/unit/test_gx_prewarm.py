"""The GX process is started only when the gate will most likely run."""

from __future__ import annotations

import json

import flows.stores.validation as validation
from flows.stores.validation import RESULT_FILE, last_validation_passed, prewarmed_gx


class FakeWorker:
    started = 0
    closed = 0

    def __init__(self) -> None:
        FakeWorker.started += 1

    def close(self) -> None:
        FakeWorker.closed += 1


def test_worker_only_without_a_passing_validation(tmp_path, monkeypatch):
    monkeypatch.setattr(validation, "GxWorker", FakeWorker)
    assert not last_validation_passed(tmp_path)
    with prewarmed_gx(tmp_path) as worker:  # nothing validated yet: GX will run
        assert isinstance(worker, FakeWorker)
    assert (FakeWorker.started, FakeWorker.closed) == (1, 1)

    (tmp_path / RESULT_FILE).write_text(json.dumps({"success": False}))
    assert not last_validation_passed(tmp_path)
    (tmp_path / RESULT_FILE).write_text("{not json")
    assert not last_validation_passed(tmp_path)

    (tmp_path / RESULT_FILE).write_text(json.dumps({"success": True}))
    assert last_validation_passed(tmp_path)
    with prewarmed_gx(tmp_path) as worker:  # passed before: the gate most likely costs a fingerprint only
        assert worker is None
    assert FakeWorker.started == 1


def test_worker_closes_when_the_gate_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(validation, "GxWorker", FakeWorker)
    before = FakeWorker.closed
    try:
        with prewarmed_gx(tmp_path):
            raise RuntimeError("gate failed")
    except RuntimeError:
        pass
    assert FakeWorker.closed == before + 1

"""A re-used source costs a fingerprint of its domain's file list, never a decode of its images."""

from __future__ import annotations

import pytest

import flows.pipeline.workspace as workspace
from grasp_core.config import load_config
from grasp_core.data import input_shape


def test_reused_source_does_not_decode_its_domain(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(
        "data: {domains: 2, image_size: 8}\nbase: {epochs: 1}\nsources: {epochs: 1}\n")
    cfg = load_config(tmp_path / "params.yaml")
    ws = workspace.Workspace(tmp_path)
    domains, _ = workspace.materialise_data(cfg, ws)
    classes = workspace.layout_classes(cfg, ws)
    shape = input_shape(ws.data(cfg), domains[0], classes)
    base, _ = workspace.ensure_base(cfg, ws, classes, shape)
    first, trained = workspace.ensure_source(cfg, ws, domains[0], classes, base, 1)
    assert trained

    def refuse(*args, **kwargs):
        raise AssertionError("a re-used source decoded its images")

    monkeypatch.setattr(workspace, "load_domain", refuse)
    again, trained = workspace.ensure_source(cfg, ws, domains[0], classes, base, 1)
    assert not trained and again.sha256 == first.sha256
    with pytest.raises(AssertionError, match="decoded"):  # a changed recipe trains, so it must decode
        workspace.ensure_source(cfg, ws, domains[0], classes, base, 2)

"""`data.generator: digits_complementary`: which classes each domain trains on, and one shared drift."""

from __future__ import annotations

from collections import Counter

import pytest

from grasp_core.config import BaseConfig, DataConfig
from grasp_core.data import check_layout, list_domains, read_split
from grasp_core.data.complementary import TOKEN_IMAGES, write_digits_complementary
from grasp_core.data.generators import get_generator
from grasp_core.errors import ConfigError

SMALL = DataConfig(generator="digits_complementary", domains=3, image_size=8)  # 2 sources + the target


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("complementary")
    root = base / "data"
    write_digits_complementary(root, SMALL, BaseConfig(mode="init"), seed=0)  # no base pool: less to write
    return root


def _train_counts(root, domain: str) -> Counter:
    classes = check_layout(root)
    return Counter(classes[i] for i in read_split(root, domain, "train", classes).y.tolist())


def test_each_source_trains_on_its_class_group_only_and_the_target_on_every_class(root):
    assert list_domains(root) == ["2020", "2021", "2022"]
    for domain, group in (("2020", 0), ("2021", 1)):
        counts = _train_counts(root, domain)
        assert all(counts[str(c)] > 20 for c in range(10) if c % 2 == group)
        assert all(counts[str(c)] == TOKEN_IMAGES for c in range(10) if c % 2 != group)
    target = _train_counts(root, "2022")
    assert min(target.values()) > 20 and len(target) == 10
    classes = check_layout(root)
    for domain in ("2020", "2021"):  # evaluation splits are whole in every domain
        assert set(read_split(root, domain, "test", classes).y.tolist()) == set(range(10))


def test_every_domain_shares_the_target_drift_so_only_coverage_differs(root):
    classes = check_layout(root)
    source, target = (read_split(root, d, "val", classes) for d in ("2020", "2022"))
    lit = [float((split.x > 0).float().mean()) for split in (source, target)]  # noise lights the background
    assert lit[0] == pytest.approx(lit[1], abs=0.02) and lit[0] > 0.5  # the target's noise, in the oldest source
    assert source.y.tolist() == target.y.tolist()


def test_generator_names_are_checked():
    assert get_generator("digits_complementary") is write_digits_complementary
    with pytest.raises(ConfigError, match="'data.generator' = 'nope' is unknown; choose one of: digits_comp"):
        get_generator("nope")

from __future__ import annotations

import pytest

from grasp_core.config import Config, config_hash, flatten, load_config
from grasp_core.errors import ConfigError
from tests.conftest import writes_nothing


def test_repository_params_yaml_loads_and_matches_the_dataclass_defaults(request):
    cfg = load_config(request.config.rootpath / "params.yaml")
    assert cfg == Config(), "params.yaml and grasp_core.config defaults drifted apart"


@pytest.mark.faults
@pytest.mark.parametrize("overrides, fragment", [
    ({"transfer.treshold": 0.3}, "unknown key 'transfer.treshold'; known here: policy, threshold"),
    ({"align.batches": True}, "'align.batches' must be int, got True"),
    ({"align.batches": "1"}, "'align.batches' must be int, got '1'"),
    ({"transfer.threshold": 2.0}, "'transfer.threshold' = 2.0 is outside [-1, 1]"),
    ({"finetune.epochs": -1}, "'finetune.epochs' = -1 must be >= 0"),
    ({"data.target_train_frac": 0.0}, "'data.target_train_frac' = 0.0 is outside (0, 1]"),
    ({"baselines.methods": "fusion"}, "'baselines.methods' must be a list of str"),
    ({"model": 3}, "'model' must be a mapping"),
    ({"on_bad_source": "ignore"}, "'on_bad_source' = 'ignore' must be 'fail' or 'skip'"),
    ({"sources.epochs": -2}, "'sources.epochs' = -2 must be >= 0"),
    ({"data.val_frac": 1.5}, "'data.val_frac' + 'data.test_frac' must lie in (0, 1)"),
    ({"validation.channels": "cmyk"}, "'validation.channels' = 'cmyk' must be 'auto', 'grey' or 'rgb'"),
    ({"validation.min_per_class": 0}, "'validation.min_per_class' = 0 must be >= 1"),
    ({"validation.classes": ["a", "a"]}, "'validation.classes' = ['a', 'a'] repeats a class"),
])
def test_config_errors_name_the_key(tmp_params, overrides, fragment):
    path = tmp_params(overrides)
    with writes_nothing(path.parent), pytest.raises(ConfigError) as err:
        load_config(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)  # one line


@pytest.mark.faults
def test_missing_file_and_bad_yaml_are_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with writes_nothing(tmp_path):  # neither a default params.yaml nor a repaired one
        with pytest.raises(ConfigError, match="not found"):
            load_config(tmp_path / "nope.yaml")
        with pytest.raises(ConfigError, match="not valid YAML"):
            load_config(bad)


def test_int_is_accepted_for_float_and_hash_is_stable(tmp_params):
    cfg = load_config(tmp_params({"transfer.threshold": 0}))
    assert cfg.transfer.threshold == 0.0 and isinstance(cfg.transfer.threshold, float)
    assert config_hash(cfg) == config_hash(load_config(tmp_params({"transfer.threshold": 0.0})))
    assert config_hash(cfg) != config_hash(Config())
    assert flatten(cfg)["transfer.threshold"] == 0.0

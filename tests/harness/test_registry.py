import dataclasses
from importlib.metadata import EntryPoint

import pytest

from harness import registry
from harness.errors import HarnessError
from harness.registry import Family, create_model, get_model_entry, list_models, register_model
from harness.tasks import TaskType


def test_builtin_families_are_listed():
    assert "clip_multimodal" in list_models()
    entry = get_model_entry("clip_multimodal")
    assert entry.task is TaskType.REGRESSION and entry.dataset == "views" and entry.search_space is not None


def test_unknown_model_error_lists_valid_names():
    with pytest.raises(HarnessError, match=r"Unknown model 'nope', valid models: .*clip_multimodal"):
        get_model_entry("nope")


def test_family_config_is_validated():
    with pytest.raises(HarnessError, match="Unknown model key 'model.hidden'"):
        create_model("clip_multimodal", {"hidden": 3})
    with pytest.raises(HarnessError, match="model.dropout must be in"):
        create_model("clip_multimodal", {"dropout": 1.5})
    family = create_model("clip_multimodal", {"hidden_dim": 32, "pretrained": None})
    assert family.config.hidden_dim == 32


@dataclasses.dataclass
class _PluginConfig:
    size: int = 1


class _PluginFamily(Family):
    task = TaskType.REGRESSION

    def fit(self, train, valid, ctx):
        pass

    def predict(self, part):
        return part.index.to_numpy(dtype=float)


def test_third_party_families_plug_in_through_entry_points(monkeypatch):
    module = type(registry)("fake_plugin")

    def load():
        register_model("plugin_family", task=TaskType.REGRESSION, config=_PluginConfig, dataset="views")(
            lambda config: _PluginFamily()
        )
        return module

    point = EntryPoint("plugin_family", "fake_plugin", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(EntryPoint, "load", lambda self: load())
    monkeypatch.setattr(registry, "entry_points", lambda group: [point] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        assert "plugin_family" in list_models()
        assert isinstance(create_model("plugin_family", {"size": 2}), _PluginFamily)
    finally:
        registry._MODELS.pop("plugin_family", None)

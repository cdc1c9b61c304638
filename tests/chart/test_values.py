"""The chart's values model (`sod_codegen.chart_values`) and the two files generated from it.

Covers: every value is documented with a comment starting with its key; `values.yaml` holds exactly
the model's defaults; `values.schema.json` rejects unknown keys everywhere except where Kubernetes
objects or parent-chart globals pass through; every non-default values file of the chart tests
parses with the model. That the committed files equal a fresh render is the drift test
(tests/unit/api/test_crds_in_sync.py); what helm does with them is in test_render.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from sod_codegen.chart_values import ChartValues

from tests.chart.helmcli import CHART, values_files


def _models(model: type[BaseModel], path: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    yield path, model
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            yield from _models(sub, f"{path}.{info.alias or name}")


@pytest.mark.parametrize(("path", "model"), list(_models(ChartValues)), ids=lambda x: str(x))
def test_every_value_is_documented_starting_with_its_key(path: str, model: type[BaseModel]):
    for name, info in model.model_fields.items():
        key = info.alias or name
        description = info.description or ""
        assert description.startswith(f"{key} "), (
            f"{path}.{key}: the docstring must start with '{key} ' (Helm convention: the comment "
            f"of a value starts with its name); it is {description!r}"
        )


def test_values_yaml_is_the_models_defaults():
    committed = yaml.safe_load((CHART / "values.yaml").read_text())
    assert committed == ChartValues().model_dump(by_alias=True, mode="json")


def _keys(model: type[BaseModel], indent: str = "") -> Iterator[tuple[str, str]]:
    """(indent, key) of every value in the model, nested ones under their parent."""
    for name, info in model.model_fields.items():
        key = info.alias or name
        yield indent, key
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            yield from _keys(sub, indent + "  ")


def test_values_yaml_has_a_comment_starting_with_the_key_above_every_value():
    lines = (CHART / "values.yaml").read_text().splitlines()
    for indent, key in _keys(ChartValues):
        at = [i for i, line in enumerate(lines) if line.startswith(f"{indent}{key}:")]
        assert at, f"values.yaml has no `{key}` at indent {len(indent)}"
        for i in at:
            j = i
            while j > 0 and lines[j - 1].startswith(f"{indent}#"):
                j -= 1
            assert j < i, f"values.yaml:{i + 1}: `{key}` has no comment above it"
            assert lines[j].startswith(f"{indent}# {key} "), (
                f"values.yaml:{j + 1}: the comment above `{key}` must start with '# {key} '"
            )


def _objects(node: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for key, sub in node.items():
            yield from _objects(sub, f"{path}.{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _objects(sub, f"{path}[{i}]")


def test_schema_rejects_unknown_keys_except_pass_throughs():
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []
    for path, node in _objects(schema):
        if "properties" in node:
            if node.get("additionalProperties") is not False:
                open_objects.append(path)
        else:
            # A map without named properties: labels (strings) or a Kubernetes object.
            assert node.get("additionalProperties") is not False, path
    # Only `global` is open: a parent chart may put its own keys there.
    assert open_objects == ["$.$defs.Global"]


def test_schema_is_json_schema_2020_12_with_no_pydantic_titles():
    text = (CHART / "values.schema.json").read_text()
    schema = json.loads(text)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert '"title"' not in text


@pytest.mark.parametrize("path", values_files(), ids=lambda p: p.stem)
def test_test_values_files_parse_with_the_model(path: Path):
    ChartValues.model_validate(yaml.safe_load(path.read_text()))


def test_model_rejects_a_typo_with_its_path():
    with pytest.raises(ValidationError) as err:
        ChartValues.model_validate({"operator": {"replicas": 3}})
    assert "operator.replicas" in str(err.value)

"""protocols/strict_json.py: duplicate keys are refused, naming the first key that repeats."""

from __future__ import annotations

import json

import pytest

from protocols.strict_json import InvalidJSON, strict_loads


@pytest.mark.parametrize(("raw", "key"), [
    ('{"a": 1, "b": 2, "b": 3, "a": 4}', "b"),
    ('{"x": {"a": 1, "a": 1}}', "a"),
    ('[{"k": 1}, {"k": 2, "j": 3, "k": 4}]', "k"),
])
def test_the_first_repeated_key_is_named(raw, key):
    with pytest.raises(InvalidJSON, match=f"duplicate key '{key}' in JSON object"):
        strict_loads(raw)


def test_objects_without_repeated_keys_load_in_order():
    raw = '{"z": 1, "a": {"m": [1, {"q": true}], "b": null}, "k": "v"}'
    loaded = strict_loads(raw)
    assert loaded == json.loads(raw)
    assert list(loaded) == ["z", "a", "k"] and list(loaded["a"]) == ["m", "b"]

"""The registry that method kinds, task types and similarity measures share: lookup, listing, refusal."""

import pytest

from lorascope.errors import ConfigError
from lorascope.registry import Registry


def test_register_get_and_order():
    reg: Registry = Registry("widget")

    @reg.register("b")
    def b():
        return "b"

    reg.add("a", "entry-a")
    assert reg.get("b") is b
    assert reg.get("a") == "entry-a"
    assert reg.names() == ("b", "a")  # registration order, not sorted
    assert "a" in reg and "c" not in reg
    assert len(reg) == 2 and list(reg) == ["b", "a"]


def test_unknown_name_lists_what_exists_and_names_the_field():
    reg: Registry = Registry("method kind")
    reg.add("full", 1)
    reg.add("lora", 2)
    with pytest.raises(ConfigError) as err:
        reg.get("loar", field="methods.1.kind")
    assert str(err.value) == "methods.1.kind: unknown method kind 'loar'; known: full, lora"
    with pytest.raises(ConfigError, match="unknown method kind"):
        reg.get(["unhashable"])  # a YAML list where a name belongs is an error, not a TypeError


def test_a_name_registers_once():
    reg: Registry = Registry("measure")
    reg.add("x", 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("x", 2)

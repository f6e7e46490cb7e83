"""The shape of a generated protobuf module, as plain data: its messages' fields and its enums'
values. tests/kserve_client.py reports tritonclient's with it (in tritonclient's environment) and
tests/test_kserve.py compares ours against that."""

from __future__ import annotations


def message_fields(module) -> dict:
    """Every message of a generated module, nested ones as "Outer.Inner": field -> [number, type, repeated]."""
    out = {}

    def walk(desc, prefix):
        name = prefix + desc.name
        out[name] = {f.name: [f.number, f.type, bool(f.is_repeated)] for f in desc.fields}
        for nested in desc.nested_types:
            walk(nested, name + ".")

    for desc in module.DESCRIPTOR.message_types_by_name.values():
        walk(desc, "")
    return out


def enum_values(module) -> dict:
    """Every enum of a generated module, nested ones as "Outer.Enum": value name -> number."""
    out = {e.name: {v.name: v.number for v in e.values} for e in module.DESCRIPTOR.enum_types_by_name.values()}

    def walk(desc, prefix):
        for e in desc.enum_types:
            out[prefix + desc.name + "." + e.name] = {v.name: v.number for v in e.values}
        for nested in desc.nested_types:
            walk(nested, prefix + desc.name + ".")

    for desc in module.DESCRIPTOR.message_types_by_name.values():
        walk(desc, "")
    return out

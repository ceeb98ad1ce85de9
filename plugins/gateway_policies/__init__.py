"""The Deliverability Gateway's built-in policies, one plugin per module.

Each module ends with `plugin = ...`, the object its entry point names; each
uses only the public API of `gateway` (see docs/plugins.md, docs/policies.md).
"""

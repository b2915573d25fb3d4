"""The README's configuration table and config.example.yaml describe the same keys."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot.config import known_keys

ROOT = Path(__file__).resolve().parents[2]


def _leaf_keys(data: object, prefix: str = "") -> set[str]:
    if not isinstance(data, dict):
        return {prefix}
    keys: set[str] = set()
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            keys |= _leaf_keys(value, path)
        else:
            keys.add(path)
    return keys


def _readme_table_keys() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_.]+)` \|", section, flags=re.MULTILINE))


def test_readme_table_matches_the_example_config() -> None:
    """Every key of config.example.yaml has a README row, and every row a key."""
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text(encoding="utf-8"))
    assert _readme_table_keys() == _leaf_keys(example)


def test_readme_table_matches_what_the_loader_knows() -> None:
    """The README documents exactly the keys the configuration loader accepts."""
    assert _readme_table_keys() == set(known_keys())

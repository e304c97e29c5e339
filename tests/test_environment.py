"""environment.yml and pyproject.toml must install the same packages at the same bounds."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> tuple[str, str]:
    name, bounds = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement).groups()
    return name.lower().replace("_", "-"), bounds.replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    listed = [r for r in pip_section if not r.startswith("-e")]
    assert dict(map(_normalise, listed)) == dict(map(_normalise, declared))
    assert "python=3.11" in environment["dependencies"]


def test_no_torchvision_anywhere():
    """torchvision pulls a CUDA torch on install; nothing may ask for it."""
    for path in ("pyproject.toml", "environment.yml", "Makefile"):
        text = (ROOT / path).read_text()
        assert not re.search(r"^\s*-?\s*[\"']?torchvision", text, re.MULTILINE), path

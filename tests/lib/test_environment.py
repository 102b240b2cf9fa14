"""environment.yml (conda, Binder) must install what pyproject.toml asks for."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

# PyPI name -> conda-forge name, where they differ; extras become packages.
CONDA_NAMES = {"redis": "redis-py"}
EXTRA_PACKAGES = {"redis[hiredis]": ["hiredis"], "fakeredis[lua]": ["lupa"]}
# Not Python packages: conda installs them, pip cannot (a real server for chapter 4).
SERVERS = {"redis-server"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


def _pyproject_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["dev"]


def _environment() -> tuple[set[str], set[str], dict]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = set(), set()
    for item in env["dependencies"]:
        if isinstance(item, dict):
            pip |= {_name(p) for p in item["pip"] if not p.startswith("-e")}
        else:
            conda.add(_name(item))
    return conda, pip, env


def test_every_pyproject_dependency_is_in_environment_yml():
    conda, pip, _ = _environment()
    missing = []
    for requirement in _pyproject_requirements():
        name = _name(requirement)
        wanted = [CONDA_NAMES.get(name, name)]
        for spec, extras in EXTRA_PACKAGES.items():
            if requirement.startswith(spec):
                wanted += extras
        missing += [w for w in wanted if w not in conda and name not in pip]
    assert not missing, f"environment.yml lacks {missing}"


def test_environment_yml_has_nothing_pyproject_does_not_ask_for():
    conda, pip, _ = _environment()
    known = {"python", "pip"} | SERVERS
    for requirement in _pyproject_requirements():
        name = _name(requirement)
        known |= {name, CONDA_NAMES.get(name, name)}
        for spec, extras in EXTRA_PACKAGES.items():
            if requirement.startswith(spec):
                known |= set(extras)
    extra = (conda | pip) - known
    assert not extra, f"environment.yml installs {extra}, which pyproject.toml does not list"


def test_python_floor_and_editable_install_agree():
    _, _, env = _environment()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"python{project['requires-python']}" in env["dependencies"]
    pip_items = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert "-e ." in pip_items

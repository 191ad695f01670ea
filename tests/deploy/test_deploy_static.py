"""deploy/ansible without a target: lint, syntax, and the role variable contract."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from deploy_harness import ANSIBLE_DIR, ROLES, ansible_env, load_yaml, require_tools

PLAYBOOKS = ("site.yml", "edge.yml", "cloud.yml")
EXAMPLE_INVENTORY = ANSIBLE_DIR / "inventory" / "example" / "hosts.yml"
ROLE_NAMES = sorted(p.name for p in ROLES.iterdir() if p.is_dir())


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    require_tools("ansible-lint")
    result = subprocess.run(
        ["ansible-lint", "--nocolor", "--profile", "production", "--offline"],
        cwd=ANSIBLE_DIR, capture_output=True, text=True, timeout=600,
        env=ansible_env(tmp_path), check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Passed with production profile" in output, output


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_syntax_check(tmp_path: Path, playbook: str) -> None:
    require_tools("ansible-playbook")
    result = subprocess.run(
        ["ansible-playbook", "--syntax-check", "-i", str(EXAMPLE_INVENTORY), playbook],
        cwd=ANSIBLE_DIR, capture_output=True, text=True, timeout=300,
        env=ansible_env(tmp_path), check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_inventory_has_the_documented_groups(tmp_path: Path) -> None:
    require_tools("ansible-inventory")
    result = subprocess.run(
        ["ansible-inventory", "-i", str(EXAMPLE_INVENTORY), "--graph"],
        cwd=ANSIBLE_DIR, capture_output=True, text=True, timeout=120,
        env=ansible_env(tmp_path), check=True,
    )
    for group in ("cloud_sc", "cloud_spu", "edge_sc", "edge_spu", "edge_gateway"):
        assert f"@{group}:" in result.stdout, result.stdout


def _defaults(role: str) -> dict[str, object]:
    data = load_yaml(ROLES / role / "defaults" / "main.yml")
    assert isinstance(data, dict)
    return data


def _spec(role: str) -> dict[str, dict[str, object]]:
    data = load_yaml(ROLES / role / "meta" / "argument_specs.yml")
    assert isinstance(data, dict)
    options = data["argument_specs"]["main"]["options"]
    assert isinstance(options, dict)
    return options


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_default_is_declared_and_prefixed(role: str) -> None:
    defaults, spec = _defaults(role), _spec(role)
    undeclared = sorted(set(defaults) - set(spec))
    assert not undeclared, f"{role}: defaults missing from meta/argument_specs.yml: {undeclared}"
    unknown = sorted(set(spec) - set(defaults))
    assert not unknown, f"{role}: argument_specs options without a default: {unknown}"
    unprefixed = [name for name in defaults if not name.startswith(f"{role}_")]
    assert not unprefixed, f"{role}: variables not prefixed with the role name: {unprefixed}"
    for name, option in spec.items():
        assert option.get("description"), f"{role}: {name} has no description"


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_spec_defaults_match_defaults_file(role: str) -> None:
    # The spec documents the default; it must say what defaults/main.yml does.
    defaults, spec = _defaults(role), _spec(role)
    for name, option in spec.items():
        if "default" in option:
            assert option["default"] == defaults[name], f"{role}: {name}"
        else:
            computed = defaults[name]
            assert isinstance(computed, str), f"{role}: {name}: declare its default"
            assert "{{" in computed, f"{role}: {name}: declare its plain default"


def _tasks(path: Path) -> list[dict[str, object]]:
    data = load_yaml(path)
    return data if isinstance(data, list) else []


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_role_internal_variables_are_prefixed(role: str) -> None:
    names: set[str] = set()
    vars_file = ROLES / role / "vars" / "main.yml"
    if vars_file.exists():
        data = load_yaml(vars_file)
        assert isinstance(data, dict)
        names.update(data)
    for path in [*(ROLES / role).glob("tasks/*.yml"), *(ROLES / role).glob("handlers/*.yml")]:
        for task in _tasks(path):
            if isinstance(task.get("register"), str):
                names.add(str(task["register"]))
            facts = task.get("ansible.builtin.set_fact")
            if isinstance(facts, dict):
                names.update(facts)
    wrong = sorted(name for name in names if not name.startswith(f"{role}_"))
    assert not wrong, f"{role}: {wrong}"


def test_config_templates_are_validated_before_replacing() -> None:
    # Every rendered TOML goes through --check-config on the node before it lands.
    for path in ROLES.rglob("tasks/*.yml"):
        for block in path.read_text().split("\n- name:"):
            if re.search(r"src: \S+\.toml\.j2", block):
                assert "validate:" in block, f"{path}: {block}"
                assert "--check-config" in block, f"{path}: {block}"
                assert "%s" in block, path


def _headwater_install_task() -> dict[str, object]:
    tasks = _tasks(ROLES / "headwater_common" / "tasks" / "install.yml")
    for task in tasks:
        pip = task.get("ansible.builtin.pip")
        if isinstance(pip, dict) and "--no-deps" in str(pip.get("extra_args", "")):
            return task
    pytest.fail("install.yml has no task installing headwater alone (--no-deps)")


def test_headwater_itself_never_comes_from_a_configured_index() -> None:
    # Dependency confusion: anyone can publish "headwater" on a public index, and a
    # node's pip.conf (piwheels on Raspberry Pi OS) or PIP_* variables add indexes.
    task = _headwater_install_task()
    pip = task["ansible.builtin.pip"]
    assert isinstance(pip, dict)
    args = str(pip["extra_args"])
    assert "--isolated" in args, args
    assert "'--no-index --find-links '" in args, args
    env = task.get("environment")
    assert isinstance(env, dict), task
    assert env.get("PIP_CONFIG_FILE") == "/dev/null", task
    names = [t.get("name") for t in _tasks(ROLES / "headwater_common" / "tasks" / "install.yml")]
    guard = "Refuse to install Headwater from a public package index"
    assert guard in names, names
    assert names.index(guard) < names.index(task["name"]), names


def test_role_refuses_to_install_headwater_from_the_public_index(tmp_path: Path) -> None:
    # No wheelhouse and no index of our own: the play stops before anything runs.
    require_tools("ansible-playbook")
    playbook = tmp_path / "guard.yml"
    playbook.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role:\n        name: headwater_common\n"
        "        tasks_from: install.yml\n"
    )
    # Should the guard ever let it through: check mode, and paths in tmp_path.
    extra = {"headwater_common_venv_dir": str(tmp_path / "venv"),
             "headwater_common_wheelhouse_dir": str(tmp_path / "wheelhouse")}
    result = subprocess.run(
        ["ansible-playbook", "--check", "-i", "localhost,", str(playbook),
         "--extra-vars", json.dumps(extra)],
        cwd=ANSIBLE_DIR, capture_output=True, text=True, timeout=300,
        env=ansible_env(tmp_path), check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "would take headwater from the public package index" in output, output
    assert not (tmp_path / "venv").exists()

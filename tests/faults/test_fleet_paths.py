"""Fleet names that would write outside ``--out``: ``build-many`` writes each build to
``OUT/<name>-<target>/``, so a name such as ``../x``, ``a/b``, an absolute path, ``..``, an
empty name or one holding NUL must be refused (a one-line ConfigError naming the entry, exit 2)
before anything is written.

The probes run the real ``secompile build-many`` command in this process (click's runner: the
same code, exit code and stderr line as a shell gets, without paying ~5 s of imports for each
of six config errors; ``tests/e2e/test_fleet_cli.py`` runs the command in subprocesses).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from secompile.compiler.app.cli import main
from secompile.compiler.app.fleet import load_fleet
from secompile.compiler.core.errors import ConfigError
from tests.faults.harness import CliResult, Observation, Probe, files_under, named_error

BAD_NAMES = {  # probe name -> the name as a TOML string (json.dumps escapes NUL as \\u0000)
    "fleet name ../x": "../escaped",
    "fleet name with /": "models/gtcrn",
    "fleet name absolute path": "/tmp/secompile-escape",
    "fleet name ..": "..",
    "fleet name empty": "",
    "fleet name with NUL": "gtcrn\0evil",
}


def _fleet(folder: Path, name: str) -> Path:
    """A fleet file whose second [[model]] is named ``name`` (the first one is fine)."""
    path = folder / "fleet.toml"
    path.write_text(f'[[model]]\nname = "good"\nmodel = "default"\n\n'
                    f'[[model]]\nname = {json.dumps(name)}\nmodel = "default"\n')
    return path


def _refused(tmp: Path, name: str) -> Observation:
    """build-many on a fleet naming a build ``name``: refused, nothing written anywhere."""
    root = tmp / "root"
    out = root / "out"
    root.mkdir()
    fleet = _fleet(root, name)
    ran = CliRunner().invoke(main, ["build-many", str(fleet), "--out", str(out), "--no-ray",
                                    "--no-cache"], catch_exceptions=False)
    result = CliResult(ran.exit_code, ran.stdout, ran.stderr)
    written = sorted(files_under(tmp) - {"root/fleet.toml"})
    seen = named_error(result, "[[model]] number 2", "name", "--out")
    return Observation(seen.ok and not written, f"{seen.observed}; {len(written)} files written")


PROBES: list[Probe] = [
    Probe("fleet", probe, "one-line ConfigError naming the entry, exit 2, nothing written",
          lambda tmp, name=name: _refused(tmp, name))
    for probe, name in BAD_NAMES.items()
]


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.id)
def test_probe(probe, tmp_path):
    seen = probe.run(tmp_path)
    assert seen.ok, seen.observed


@pytest.mark.parametrize("name", [*BAD_NAMES.values(), "a/../b", "x\n", ".hidden", "c:d"])
def test_load_fleet_rejects_names_that_leave_out(tmp_path, name) -> None:
    with pytest.raises(ConfigError, match=r"\[\[model\]\] number 2: name .* --out"):
        load_fleet(_fleet(tmp_path, name), tmp_path / "out", None)


def test_plain_names_stay_directly_under_out(tmp_path) -> None:
    builds = load_fleet(_fleet(tmp_path, "gtcrn-v1.2_b"), tmp_path / "out", None)
    assert [b.request.out for b in builds] == [tmp_path / "out" / "good-cpu",
                                              tmp_path / "out" / "gtcrn-v1.2_b-cpu"]


def test_a_build_folder_linked_outside_out_is_refused(tmp_path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "good-cpu").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ConfigError, match=r"number 1: build folder 'good-cpu' would be written "
                                          r"outside --out"):
        load_fleet(_fleet(tmp_path, "fine"), out, None)

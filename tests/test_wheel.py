"""duet as users install it: the wheel carries every preset, and the installed `duet` finds
them from a folder outside any checkout."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.name for p in (REPO / "deploy" / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the venv's setuptools builds it, with no index to reach.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(out), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    (built,) = out.glob("duet_rl-*.whl")
    return built


def test_the_wheel_holds_every_preset_and_deployment_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert PRESETS and {f"deploy/configs/{p}" for p in PRESETS} <= names
    assert "deploy/runtime_env.yaml" in names and "deploy/prometheus.yml" in names
    assert "cluster/presets.py" in names and "cluster/cli.py" in names


def test_duet_installed_from_the_wheel_runs_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The wheel's packages come first on the path, before the checkout's editable install;
    # its dependencies come from this interpreter.
    env = {**os.environ, "PYTHONPATH": str(site)}

    def duet(*args):
        return subprocess.run([sys.executable, str(site / "bin" / "duet"), *args], cwd=elsewhere,
                              env=env, capture_output=True, text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import cluster; print(cluster.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(site))

    default = duet("train", "--dry-run")  # no --config: the embedded default preset
    assert default.returncode == 0, default.stderr
    assert "name: tiny-cpu" in default.stdout and "resource plan:" in default.stdout
    for preset in PRESETS:
        for given in (preset[:-len(".yaml")], f"deploy/configs/{preset}"):
            done = duet("train", "--config", given, "--dry-run")
            assert done.returncode == 0, (given, done.stderr)
            assert "resource plan:" in done.stdout
    missing = duet("train", "--config", "no-such-preset", "--dry-run")
    assert missing.returncode != 0
    assert "no-such-preset" in missing.stderr and "tiny-cpu" in missing.stderr

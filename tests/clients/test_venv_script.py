"""scripts/venv.sh, through which scripts/test.sh installs the Python clients:
into a virtual environment it makes or reuses, never into the system Python
(which Debian refuses: externally managed, PEP 668)."""

import subprocess
import zipfile
from pathlib import Path

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "venv.sh"


def tiny_wheel(directory: Path) -> Path:
    """A one-module wheel, so installing it needs no network."""
    path = directory / "tributary_venv_probe-1.0-py3-none-any.whl"
    info = "tributary_venv_probe-1.0.dist-info"
    files = {
        "tributary_venv_probe.py": "WHERE = __file__\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: tributary-venv-probe\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{info}/RECORD", record)
    return path


def run_script(venv: Path, requirements: Path):
    run = subprocess.run(["bash", str(SCRIPT), str(venv), str(requirements)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def probe_location(python) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", "import tributary_venv_probe as p; print(p.WHERE)"],
                          capture_output=True, text=True, timeout=60)


def test_requirements_go_into_a_venv_that_is_made_once_and_repaired(tmp_path):
    venv = tmp_path / ".venv"
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{tiny_wheel(tmp_path)}\n")

    assert "creating the Python virtual environment" in run_script(venv, requirements)
    installed = probe_location(venv / "bin" / "python")
    assert installed.returncode == 0, installed.stderr
    assert Path(installed.stdout.strip()).is_relative_to(venv)
    assert probe_location("python3").returncode != 0, "installed outside the venv"

    # Run again: the venv is reused as it is.
    assert "creating" not in run_script(venv, requirements)
    # A venv without pip (what a failed `python3 -m venv` leaves) is made again.
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-y", "-q", "pip"], check=True, timeout=120)
    assert "creating the Python virtual environment" in run_script(venv, requirements)
    assert probe_location(venv / "bin" / "python").returncode == 0

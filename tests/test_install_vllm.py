"""scripts/install_vllm.sh decides where the CPU build of torch comes from: pip's configured indexes when they can
resolve the pinned ``torch==…+cpu``, PyTorch's CPU wheel index otherwise, ``CM2DATA_TORCH_INDEX_URL`` when set.

``--plan`` prints that decision and the pip commands without building anything. pip is pointed at a local folder only
(``PIP_NO_INDEX``, ``PIP_FIND_LINKS``, no configuration file), so the probe never leaves the machine: an empty folder
is the fresh machine, a folder holding a wheel named like the pin is this platform's local wheel folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install_vllm.sh"
PYTORCH_CPU = "https://download.pytorch.org/whl/cpu"


def _torch_pin() -> tuple[str, str]:
    text = (REPO / "requirements" / "vllm.txt").read_text()
    match = re.search(r"^torch==(\S+)", text, re.M)
    assert match, "requirements/vllm.txt pins no torch"
    return "torch", match.group(1)


def _fake_wheel(folder: Path, name: str, version: str) -> None:
    """A minimal valid wheel: pip's dry run resolves it from metadata alone."""
    dist = f"{name}-{version}.dist-info"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")


def _plan(tmp_path: Path, links: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "CM2DATA_TORCH_INDEX_URL"}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(links),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PYTHON=sys.executable,
        CM2DATA_CACHE=str(tmp_path / "cache"),
        **extra,
    )
    return subprocess.run(
        ["bash", str(SCRIPT), "--plan"], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _install_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if "-r <(grep -v '# no-deps'" in line]
    assert len(lines) == 1, stdout
    return lines[0]


def test_plan_falls_back_to_pytorch_cpu_index_when_the_pin_is_not_found(tmp_path: Path) -> None:
    empty = tmp_path / "wheels"
    empty.mkdir()
    result = _plan(tmp_path, empty)
    assert result.returncode == 0, result.stderr
    assert "is not available from pip's configured indexes" in result.stderr
    assert f"--extra-index-url {PYTORCH_CPU}" in _install_line(result.stdout)
    assert not (tmp_path / "cache" / "venvs").exists(), "--plan built something"


def test_plan_keeps_the_configured_indexes_when_they_serve_the_pin(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _fake_wheel(wheels, *_torch_pin())
    result = _plan(tmp_path, wheels)
    assert result.returncode == 0, result.stderr
    assert "found through pip's configured indexes" in result.stderr
    assert "--extra-index-url" not in _install_line(result.stdout)


def test_plan_takes_the_index_from_the_environment_without_probing(tmp_path: Path) -> None:
    empty = tmp_path / "wheels"
    empty.mkdir()
    mirror = "http://127.0.0.1:9/torch-mirror"
    result = _plan(tmp_path, empty, CM2DATA_TORCH_INDEX_URL=mirror)
    assert result.returncode == 0, result.stderr
    assert "from CM2DATA_TORCH_INDEX_URL" in result.stderr
    line = _install_line(result.stdout)
    assert f"--extra-index-url {mirror}" in line and PYTORCH_CPU not in line

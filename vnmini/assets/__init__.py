"""vnmini.assets -- files bundled with the package, read through ``importlib.resources``.

So a wheel install finds them exactly like the source tree does:

    from vnmini.assets import asset_text, asset_path
    text = asset_text("vi_sample.txt")          # a mixed-domain Vietnamese sample
    path = asset_path("vi_mc_sample.jsonl")    # a real filesystem path

- ``vi_sample.txt``: Vietnamese text outside the statute domain (software help, news,
  conversation): the default verify text of both exporters and the bench prompt.
- ``vi_mc_sample.jsonl``: a small VMLU-format multiple-choice sample (``--mc sample``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SAMPLE_TEXT = "vi_sample.txt"
SAMPLE_MC = "vi_mc_sample.jsonl"


def asset_text(name: str) -> str:
    """The bundled file ``name`` as UTF-8 text."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def asset_path(name: str) -> Path:
    """A filesystem path to the bundled file ``name``.

    pip installs wheels unpacked, so the resource is a real file; a zipped import (which
    vnmini never is) would fail here loudly rather than hand out a wrong path.
    """
    p = Path(str(resources.files(__name__).joinpath(name)))
    if not p.is_file():
        raise FileNotFoundError(f"bundled file {name!r} missing from {p.parent}; reinstall vnmini")
    return p

"""mfe-iqa: MFENet (Multi-task Feature Enhancement Network) for no-reference image quality assessment.

``from mfe_iqa import load_model`` gives the scoring API; it is imported lazily so that
``import mfe_iqa`` (e.g. by the config tooling) does not pull in torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["IQAModel", "__version__", "load_model"]


def __getattr__(name: str) -> Any:
    if name in ("load_model", "IQAModel"):
        from mfe_iqa.inference import api

        return getattr(api, name)
    raise AttributeError(f"module 'mfe_iqa' has no attribute {name!r}")

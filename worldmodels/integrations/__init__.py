"""Bridges to other libraries. Each bridge is an optional extra: nothing here is imported by the core package.

- ``worldmodels.integrations.mbrl_lib``: mbrl-lib 0.2.0 (``from_mbrl``, ``to_model_env``), docs/mbrl_lib.md.
  Installed in the development environment (``uv sync``); with pip: ``pip install --no-deps mbrl==0.2.0``.
"""

from __future__ import annotations

_LAZY = {
    "from_mbrl": "mbrl_lib",
    "to_model_env": "mbrl_lib",
    "MbrlDynamics": "mbrl_lib",
    "EnsembleModelAdapter": "mbrl_lib",
}


def __getattr__(name: str):
    # `from worldmodels.integrations import from_mbrl` imports mbrl-lib only when asked for.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)

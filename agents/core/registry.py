"""Every `python -m agents.<name>` the package has, found by looking, so a new agent joins the
contract test, the throughput benchmark and the evaluation suite by existing.

An agent module is `agents/<name>.py` with one Agent subclass of its own, one config dataclass
whose `name` default is `<name>`, and a `main()`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import agents
from agents.core.agent import Agent


def discover_agents() -> dict[str, tuple[type[Agent], type]]:
    """name -> (the module's own Agent subclass, its config dataclass), sorted by name."""
    found = {}
    for info in sorted(pkgutil.iter_modules(agents.__path__), key=lambda i: i.name):
        if info.ispkg:
            continue
        mod = importlib.import_module(f"agents.{info.name}")
        classes = [c for c in vars(mod).values() if inspect.isclass(c) and c.__module__ == mod.__name__]
        agent_cls = [c for c in classes if issubclass(c, Agent)]
        config_cls = [c for c in classes if dataclasses.is_dataclass(c)
                      and any(f.name == "name" and f.default == info.name for f in dataclasses.fields(c))]
        if agent_cls and hasattr(mod, "main"):
            if len(agent_cls) != 1 or len(config_cls) != 1:
                raise TypeError(f"agents/{info.name}.py must define one Agent subclass and one config "
                                f"dataclass whose name is '{info.name}' (found {len(agent_cls)} and {len(config_cls)})")
            found[info.name] = (agent_cls[0], config_cls[0])
    return found

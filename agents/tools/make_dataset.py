"""Build a D4RL-style Minari dataset from the recipe (see worldmodels/data/recipes.py), with SAC as
the behaviour learner (agents/core/behaviour.py).

    python -m agents.tools.make_dataset env_id=Hopper-v5 quality=medium size=20000 train_steps=30000 seed=0

Arguments are key=value (the same keys as `dataset.*` in the agent configs, plus
device=auto|cpu|cuda). A dataset that exists is found at once. The last line printed is
the dataset's Minari ID, to pass as `dataset.id=...` to any agent.
"""

from __future__ import annotations

import sys
from dataclasses import fields

from agents.core.behaviour import SACBehaviour
from agents.core.config import ConfigError, resolve_device
from worldmodels.data.recipes import QUALITIES, BehaviourInterrupted, Recipe, build
from worldmodels.memory import keep_freed_memory

USAGE = (
    "usage: python -m agents.tools.make_dataset env_id=ENV quality=Q [size=N] [train_steps=N] [seed=N] [device=D]"
)


def parse(argv: list[str]) -> tuple[Recipe, str]:
    known = {f.name: f.type for f in fields(Recipe)}
    values: dict[str, object] = {}
    device = "auto"
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise SystemExit(f"error: argument {arg!r} is not key=value.\n{USAGE}")
        if key == "device":
            device = value
        elif key in known:
            try:
                values[key] = int(value) if known[key] in (int, "int") else value
            except ValueError:
                raise SystemExit(f"error: {key}={value!r} must be an integer.\n{USAGE}") from None
        else:
            raise SystemExit(f"error: unknown key {key!r}; valid keys: {', '.join([*known, 'device'])}.\n{USAGE}")
    recipe = Recipe(**values)
    if recipe.quality not in QUALITIES:
        raise SystemExit(f"error: quality={recipe.quality!r} is not a recipe; choose one of {', '.join(QUALITIES)}.")
    for key in ("size", "train_steps"):
        if getattr(recipe, key) <= 0:
            raise SystemExit(f"error: {key} must be positive.")
    return recipe, device


def main(argv: list[str] | None = None) -> str:
    recipe, device = parse(sys.argv[1:] if argv is None else argv)
    try:
        keep_freed_memory()  # worldmodels/memory.py
        dataset_id = build(recipe, SACBehaviour(), resolve_device(device))
    except (ConfigError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    except BehaviourInterrupted as err:
        print(f"stopped: {err}", file=sys.stderr)
        sys.exit(err.exit_status)
    print(dataset_id)
    return dataset_id


if __name__ == "__main__":
    main()

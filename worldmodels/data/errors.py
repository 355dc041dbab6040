"""The one error a dataset problem raises, shared by loading, validation and writing.

It lives apart from the loader so that the loader can validate what it reads while the
validator and the writer raise the same error, without modules importing each other in a circle.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset cannot be used as it is. The message names the dataset, the field and the fix."""


def message(dataset_id: str, field: str | None, problem: str, fix: str) -> str:
    """One line: "dataset '<id>', field '<field>': <problem>. <fix>"."""
    where = f"dataset '{dataset_id}'" + (f", field '{field}'" if field else "")
    return f"{where}: {problem}. {fix}"

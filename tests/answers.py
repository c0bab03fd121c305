"""Comparing classification answers: the same classes in the same order, probabilities to 1e-4.

Batch size and composition change the last float digits of a compiled forward pass, so two
answers for the same image are equal in their classes, not bit for bit in their probabilities.
"""

from __future__ import annotations

from typing import Any

import pytest


def same_answer(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> bool:
    return ([p["index"] for p in first] == [p["index"] for p in second]
            and [p["probability"] for p in first] == pytest.approx([p["probability"] for p in second], abs=1e-4))

"""The shared rule signature and registry.

Every model rule is a function ``rule(sim, rng) -> None``: it reads the simulation's state and records what it
wants (uptake and secretion into field buffers, deaths, division intents) without changing agents directly.
The schedule commits all intents once per step, so the outcome never depends on agent order. Config lists
rules by name, so any of them can be switched off.

Each rule belongs to a phase:

``exchange``
    Runs before the fields advance; records uptake and secretion.
``behaviour``
    Runs after the fields advance; records deaths, divisions and moves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Rule", "rule"]

RuleFn = Callable[..., None]


@dataclass(frozen=True)
class Rule:
    """A named model rule.

    Attributes
    ----------
    name : str
        Name used in config (e.g. ``"necrosis"``) and as the key of the rule's own random stream.
    phase : {"exchange", "behaviour"}
        When in the step the rule runs.
    fn : callable
        ``fn(sim, rng) -> None``.
    """

    name: str
    phase: Literal["exchange", "behaviour"]
    fn: RuleFn


def rule(name: str, phase: Literal["exchange", "behaviour"]):
    """Decorate a function ``fn(sim, rng)`` as a :class:`Rule`."""

    def wrap(fn: RuleFn) -> Rule:
        return Rule(name, phase, fn)

    return wrap

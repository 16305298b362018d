"""Task presets: which classes each domain has, and with what priors.

Class ids index `Task.class_names`, which lists the K known (source) classes first, so `label < K` means known
and `label >= K` means unknown: the convention DANCE's evaluation uses. Priors differ between the domains
because label shift is real (Galaxy10 has 334 cigar-shaped ellipticals against 2,645 round ones).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["Task", "TASKS", "get_task", "MORPHOLOGIES"]

# Every morphology the simulator can draw.
MORPHOLOGIES = (
    "elliptical",
    "spiral",
    "barred_spiral",
    "edge_on",
    "merger",
    "ring",
    "lens",
    "artifact",
)


@dataclass(frozen=True)
class Task:
    name: str
    class_names: tuple[str, ...]
    num_known: int
    source_priors: dict[str, float]
    target_priors: dict[str, float]

    @property
    def known(self) -> tuple[str, ...]:
        return self.class_names[: self.num_known]

    @property
    def shared(self) -> list[int]:
        """Known class ids that the target also has."""
        return [i for i, c in enumerate(self.known) if c in self.target_priors]

    @property
    def source_private(self) -> list[int]:
        return [i for i, c in enumerate(self.known) if c not in self.target_priors]

    @property
    def unknown(self) -> list[int]:
        return list(range(self.num_known, len(self.class_names)))

    def priors(self, domain: str) -> dict[str, float]:
        return self.source_priors if domain == "source" else self.target_priors


def _task(name: str, source: dict[str, float], target: dict[str, float]) -> Task:
    known = tuple(source)
    unknown = tuple(c for c in target if c not in source)
    for priors in (source, target):
        assert abs(sum(priors.values()) - 1.0) < 1e-9 and set(priors) <= set(MORPHOLOGIES)
    return Task(name, known + unknown, len(known), dict(source), dict(target))


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        # DeepAstroUDA's 3-class setting: spiral and elliptical known, mergers appear only in the target.
        _task("deepastro3", {"spiral": 0.5, "elliptical": 0.5}, {"spiral": 0.45, "elliptical": 0.35, "merger": 0.2}),
        # Universal DA: shared classes, a source-private class (ring) and target-private unknowns.
        _task(
            "universal",
            {"elliptical": 0.24, "spiral": 0.2, "barred_spiral": 0.16, "edge_on": 0.14, "merger": 0.1, "ring": 0.16},
            {
                "elliptical": 0.18,
                "spiral": 0.24,
                "barred_spiral": 0.1,
                "edge_on": 0.16,
                "merger": 0.17,
                "lens": 0.07,
                "artifact": 0.08,
            },
        ),
    ]
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; choose one of {sorted(TASKS)}") from None

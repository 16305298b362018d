"""One search space over several methods: the sweep chooses the method as well as its settings.

Optuna's define-by-run spaces make this a plain space: `method.name` is a categorical suggested first, the
parameters every method shares (optimiser, model, unknown clusters) follow once, and each method's own parameters
are suggested only in trials that chose it (`when=("method.name", <method>)`). TPE (multivariate, grouped) then
models each method's sub-space apart, as it does for SGD's momentum. A parameter is named by its run-config key,
except a key that several of the methods search: there each method's is named `<key>:<method>`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from uda_core.errors import ConfigError

from .base import METHOD_KEY, METHOD_SEP, Categorical, Param, Space

__all__ = ["joint_space"]


def joint_space(spaces: list[Space]) -> Space:
    """The space searching the methods of `spaces` (each a method's own space), in their order."""
    names = [s.name for s in spaces]
    if len(set(names)) != len(names):
        raise ConfigError(f"search.space: each method once, got {names}")
    # Shared: the same parameter (key, range, condition) in every space; suggested once, whatever the method.
    shared = [p for p in spaces[0].params if all(p in s.params for s in spaces[1:])]
    own = {s.name: [p for p in s.params if p not in shared] for s in spaces}
    # A key several methods search (sphkmeans' and contrastive's `tau`) is a different parameter in each: one Optuna
    # name per method, `<key>:<method>`, so that neither a study's distribution nor TPE's model mixes them.
    searched_by = Counter(p.key for params in own.values() for p in params)
    params: list[Param] = [Categorical(METHOD_KEY, tuple(names)), *shared]
    for method, method_params in own.items():
        own_keys = {p.key for p in method_params}
        for p in method_params:
            if searched_by[p.key] > 1:
                p = replace(p, name=f"{p.key}{METHOD_SEP}{method}")
            # Suggested when this method was chosen. A parameter conditional on another of the method's own keeps
            # its condition, which already implies the method; one conditional on a shared parameter cannot be.
            if p.when is None:
                p = replace(p, when=(METHOD_KEY, method))
            elif p.when[0] not in own_keys:
                raise ConfigError(f"search.space: {p.key} of the {method!r} space depends on {p.when[0]}, which "
                                  "every method shares: a joint space cannot make it depend on the method too")
            params.append(p)
    return Space("+".join(names), tuple(params))

"""Random-neuron controls: as many random neurons as a set of knowledge neurons, seeded.

Every analysis that compares knowledge neurons with random ones draws them here, in one of two
ways:

- :func:`same_layers` (``modify``, ``heldout``): one random neuron in the layer of each knowledge
  neuron, so the control has the same layer profile;
- :func:`any_layers` (``update``, ``erase``): as many neurons drawn uniformly over all layers.

Both skip the knowledge neurons themselves and never draw a neuron twice. A draw depends only on
its generator, which :func:`seeded_rng` makes from the run's seed and a few labels (the analysis,
the fact or relation), so it does not depend on the order of the facts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from kn_lens.errors import KnLensError
from kn_lens.neuron import Neuron


def seeded_rng(seed: int, *parts: str) -> random.Random:
    """A generator seeded by ``"seed:part1:part2..."`` (e.g. ``seeded_rng(0, "fact", "P19/3")``)."""
    return random.Random(":".join([str(seed), *parts]))


def same_layers(neurons: Sequence[Neuron], d_mlp: int, rng: random.Random) -> list[Neuron]:
    """One random neuron in the layer of each of ``neurons``, in their order, none of them among
    ``neurons`` and no two alike. A layer whose neurons are all taken gets none."""
    taken = set(neurons)
    out = []
    for n in neurons:
        free = d_mlp - sum(1 for t in taken if t.layer == n.layer)
        if free <= 0:
            continue
        while True:
            r = Neuron(n.layer, rng.randrange(d_mlp))
            if r not in taken:
                taken.add(r)
                out.append(r)
                break
    return out


def any_layers(
    neurons: Sequence[Neuron], n_layers: int, d_mlp: int, rng: random.Random
) -> list[Neuron]:
    """As many random neurons as ``neurons``, uniform over all ``n_layers`` layers, none of them
    among ``neurons`` and no two alike."""
    exclude = set(neurons)
    if len(neurons) > n_layers * d_mlp - len(exclude):
        raise KnLensError(
            f"cannot draw {len(neurons)} random neurons besides {len(exclude)} of a model with "
            f"{n_layers * d_mlp} neurons"
        )
    picked: list[Neuron] = []
    while len(picked) < len(neurons):
        n = Neuron(rng.randrange(n_layers), rng.randrange(d_mlp))
        if n not in exclude:
            exclude.add(n)
            picked.append(n)
    return picked


def random_control(neurons: Sequence[Neuron], d_mlp: int, seed: int, key: str) -> list[Neuron]:
    """The suppress/amplify control of fact ``key``: :func:`same_layers` with the generator
    ``seeded_rng(seed, "random-control", key)`` (``modify`` and ``heldout`` draw the same)."""
    return same_layers(neurons, d_mlp, seeded_rng(seed, "random-control", key))


__all__ = ["any_layers", "random_control", "same_layers", "seeded_rng"]

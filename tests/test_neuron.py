"""The neuron concept: Neuron, its hook name, model_shape and the one validator check_neurons.

A stand-in model (only ``cfg``) is enough here: the validator reads nothing else.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kn_lens.errors import KnLensError
from kn_lens.neuron import (
    HasConfig,
    Neuron,
    check_neurons,
    hook_name,
    model_shape,
    neuron_map_from_json,
    neurons_from_json,
)

MODEL = SimpleNamespace(cfg=SimpleNamespace(n_layers=3, d_mlp=8))


def test_neuron_names_and_hook_point():
    n = Neuron(2, 5)
    assert (n.layer, n.index) == (2, 5) and str(n) == "L2.N5"
    assert hook_name(n.layer) == "blocks.2.mlp.hook_post"


def test_model_shape_and_protocol(tiny_model):
    assert isinstance(tiny_model, HasConfig) and isinstance(MODEL, HasConfig)
    assert model_shape(MODEL) == (3, 8)
    assert model_shape(tiny_model) == (tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp)
    with pytest.raises(ValueError, match="no MLP layers"):
        model_shape(SimpleNamespace(cfg=SimpleNamespace(n_layers=2, d_mlp=None)))


def test_plain_pairs_and_integer_types_become_neurons():
    given = [(1, 2), Neuron(0, 5), (np.int64(2), torch.tensor(7))]
    assert check_neurons(MODEL, given) == [Neuron(1, 2), Neuron(0, 5), Neuron(2, 7)]
    assert check_neurons(MODEL, iter([(0, 0)])) == [Neuron(0, 0)]


def test_duplicates_refused_for_edits_kept_for_hooks():
    with pytest.raises(ValueError, match=r"neuron L1\.N2 \(\(1, 2\)\) appears more than once"):
        check_neurons(MODEL, [(1, 2), (0, 0), (1, 2)])
    assert check_neurons(MODEL, [(1, 2), (1, 2)], unique=False) == [Neuron(1, 2)] * 2


def test_empty_set_refused_unless_allowed():
    with pytest.raises(ValueError, match="empty neuron set"):
        check_neurons(MODEL, [])
    assert check_neurons(MODEL, [], allow_empty=True) == []


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([(3, 0)], r"L3\.N0 \(\(3, 0\)\) out of range: layer must be in \[0, 3\)"),
        ([(-1, 0)], r"layer must be in \[0, 3\)"),
        ([(0, 8)], r"L0\.N8 \(\(0, 8\)\) out of range: index must be in \[0, 8\)"),
        ([(0, 1.0)], r"neuron \(0, 1\.0\) is not a \(layer, index\) pair of ints"),
        ([(True, 1)], r"neuron \(True, 1\) is not a \(layer, index\) pair"),
        ([(0, 1, 2)], r"neuron \(0, 1, 2\) is not a \(layer, index\) pair"),
        ([5], r"neuron 5 is not a \(layer, index\) pair"),
        ("L0.N1", "neurons must be a collection of \\(layer, index\\) pairs, got 'L0.N1'"),
        (torch.tensor([[0, 1]]), "neurons must be a collection of \\(layer, index\\) pairs"),
    ],
)
def test_bad_neurons_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        check_neurons(MODEL, bad)


@pytest.mark.parametrize("bad", [[(2.7, 16.9)], [(2.0, 1)], [("2", 1)], [(0, False)]])
def test_non_integer_layer_or_index_refused_not_rounded(bad):
    with pytest.raises(KnLensError, match="not a \\(layer, index\\) pair of ints"):
        check_neurons(MODEL, bad)


def test_neurons_from_json_refuses_non_integers_and_names_the_file():
    assert neurons_from_json([[2, 16], [0, 3]], "n.json") == [Neuron(2, 16), Neuron(0, 3)]
    for bad in ([[2.7, 16.9]], [[True, 1]], [["2", "16"]], [[1]], [5], {"a": 1}):
        with pytest.raises(KnLensError, match=r"^n\.json: "):
            neurons_from_json(bad, "n.json")


def test_neuron_map_from_json_names_the_file_and_the_fact():
    doc = {"ours": {"P19/0": [[1, 2]]}, "baseline": {"P19/0": []}}
    assert neuron_map_from_json(doc, "DIR/neurons.json") == {
        "ours": {"P19/0": [Neuron(1, 2)]},
        "baseline": {"P19/0": []},
    }
    with pytest.raises(KnLensError, match=r'DIR/neurons\.json has no "neurons"'):
        neuron_map_from_json(None, "DIR/neurons.json")
    with pytest.raises(
        KnLensError, match=r"DIR/neurons\.json: ours neurons of P19/0: neuron \[2\.7"
    ):
        neuron_map_from_json({"ours": {"P19/0": [[2.7, 16.9]]}}, "DIR/neurons.json")
    with pytest.raises(KnLensError, match=r"DIR/neurons\.json"):
        neuron_map_from_json({"ours": [[1, 2]]}, "DIR/neurons.json")

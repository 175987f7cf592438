"""Split a prepared graph into reconstruction units, from its structure alone.

A *cut* is a node that every later node reaches the input only through: in topological order, no
tensor produced before it is consumed after it. Consecutive cuts bound single-entry, single-exit
regions (the entry dominates the region, the exit post-dominates it). A region of more than one
node is a residual structure -- a ResNet basic block or an inverted-residual block ending at its
``add`` -- and becomes one unit. The plain chains between them (stems, stride-2 inverted-residual
blocks without a skip, classifier heads) are grouped into units that end at a layer without a fused
activation (a linear bottleneck or the logits) or after ``max_layers`` layers. No module names are
read, so any captured model splits the same way.

Layer-wise AdaRound walks the same units layer by layer (see ``brecq.reconstruct_graph``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Graph, Node

GEMM_OPS = ("conv", "linear")


@dataclass(frozen=True)
class Unit:
    """Nodes reconstructed together: ``entry`` is the one tensor they read from outside,
    ``nodes`` are in topological order, and the last one's output is the unit's output."""

    entry: str
    nodes: tuple[Node, ...]
    kind: str  # "block" (a residual region) | "chain"

    @property
    def output(self) -> str:
        return self.nodes[-1].name

    @property
    def layers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.op in GEMM_OPS)

    def describe(self) -> str:
        names = ",".join(n.name for n in self.layers) or "-"
        return f"{self.kind} {self.entry}->{self.output} [{names}]"


def cut_points(graph: Graph) -> list[int]:
    """Indices (in ``graph.nodes``) of the cuts, the input (0) included."""
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    last_use = {n.name: index[n.name] for n in graph.nodes}
    for i, n in enumerate(graph.nodes):
        for a in n.inputs:
            last_use[a] = max(last_use[a], i)
    last_use[graph.output] = len(graph.nodes)  # the graph output is live to the end
    cuts, live_until = [], -1
    for i, n in enumerate(graph.nodes):
        if live_until <= i:
            cuts.append(i)
        live_until = max(live_until, last_use[n.name])
    return cuts


def regions(graph: Graph) -> list[tuple[str, list[Node]]]:
    """(entry tensor, nodes) for each region between consecutive cuts."""
    cuts = cut_points(graph)
    out = []
    for a, b in zip(cuts, cuts[1:]):
        out.append((graph.nodes[a].name, graph.nodes[a + 1 : b + 1]))
    return out


def find_units(graph: Graph, max_layers: int = 3) -> list[Unit]:
    """The graph's nodes after the input as consecutive units (each one's entry is the previous
    one's output). Nodes after the last cut (none in a well-formed graph) are not included."""
    units: list[Unit] = []
    chain: list[Node] = []
    chain_entry = graph.input

    def close_chain() -> None:
        nonlocal chain, chain_entry
        if chain:
            units.append(Unit(chain_entry, tuple(chain), "chain"))
            chain_entry = chain[-1].name
            chain = []

    for entry, nodes in regions(graph):
        if len(nodes) > 1:
            close_chain()
            units.append(Unit(entry, tuple(nodes), "block"))
            chain_entry = nodes[-1].name
            continue
        n = nodes[0]
        chain.append(n)
        n_layers = sum(1 for c in chain if c.op in GEMM_OPS)
        if n.op in GEMM_OPS and ("act" not in n.attrs or n_layers >= max_layers):
            close_chain()
    close_chain()
    return units

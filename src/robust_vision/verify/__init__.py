"""Deterministic certification by bound propagation: IBP, CROWN-IBP, CROWN and alpha-CROWN
lower bounds of the logit margins of the project's models over Linf / L2 balls intersected
with [0, 1] (docs/VERIFY.md).

Layering: imports ``models`` only. One file per concern: ``graph`` (the bound-able ops),
``convert`` (model -> graph), ``spec`` (input sets, margin matrix), ``interval`` (IBP),
``backward`` (CROWN's relaxation and backward pass), ``alpha`` (alpha-CROWN), ``bounds``
(methods).
"""

from robust_vision.verify.bounds import METHODS, check_method, graph_margin_bounds, jitted_margin_bounds, margin_bounds
from robust_vision.verify.convert import graph_and_values, to_graph
from robust_vision.verify.graph import UnsupportedLayer
from robust_vision.verify.spec import InputSet, margin_matrix, worst_margin

__all__ = ["METHODS", "InputSet", "UnsupportedLayer", "check_method", "graph_and_values", "graph_margin_bounds",
           "jitted_margin_bounds", "margin_bounds", "margin_matrix", "to_graph", "worst_margin"]

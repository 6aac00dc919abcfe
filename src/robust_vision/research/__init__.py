"""The seed's "Systematic Decomposition of Neural Network Robustness" study, as one command.

``robust-vision-research run`` (:func:`robust_vision.research.cli.research_main`) trains the
eight methods of the seed's master table under two protocols, evaluates them on one noise
grid with one SNR definition, and writes the master table, the controlled experiments
(learning rule, constraints, loss, architecture), the factor-importance ranking, the
validation checklist and the comparison with the paper's claims. See docs/RESEARCH.md.

Modules: :mod:`.settings` (study settings), :mod:`.methods` (methods and experiments),
:mod:`.protocols` (pattern and classification protocols), :mod:`.tables` (aggregation and
table files), :mod:`.verdicts` (checklist and claims from the written tables),
:mod:`.figures`, :mod:`.study` (the whole run), :mod:`.cli`.
"""

from robust_vision.research.methods import EXPERIMENTS, METHODS, Method, method_by_key
from robust_vision.research.settings import StudySettings, load_study

__all__ = ["EXPERIMENTS", "METHODS", "Method", "StudySettings", "load_study", "method_by_key"]

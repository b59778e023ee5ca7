"""WSOL methods by name. A method = its model pieces + its loss + its score-map readout.

The training loop, the data and the evaluator are shared and know no method by name.
"""

from bcct.methods.base import METHODS, Method, build_method, register  # noqa: F401
from bcct.methods import cam  # noqa: F401  (registers "cam")
from bcct.methods import bc_ct  # noqa: F401,E402  (registers "bcct")
from bcct.methods import backprop, has, acol, spg, adl  # noqa: F401,E402  (the baselines of the paper's Tables 1-2)
from bcct.methods import training_free  # noqa: F401,E402  (feature_norm, pc1, ddt: the training-free floor)

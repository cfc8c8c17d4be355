"""copl-ray: Ray-distributed trainer and server for CoPL personalized reward models.

Data flows one way: data -> graph (GNN, adaptation) -> reward (MoLE, training)
-> eval/report -> serve. Pure model code (``graph``, ``mole``, ``reward.model``)
imports no Ray, so it can be tested alone.
"""

__version__ = "0.1.0"

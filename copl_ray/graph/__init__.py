"""Stage 1 of CoPL: the signed user–response GNN, its training and unseen-user adaptation.

Pure torch modules (no Ray): ``bipartite`` (graph), ``conv`` (layer), ``model``
(``CoPLGNN``), ``train`` (loop), ``adapt`` (unseen users), ``users`` (the user-embedding
record and file every later stage reads), ``artifacts``, ``export``, ``plots``.
``stage.run_gnn_stage`` runs it as a Ray Train job.
"""

from copl_ray.graph.adapt import adapt_unseen_users
from copl_ray.graph.artifacts import GNNArtifacts
from copl_ray.graph.bipartite import BipartiteGraph, build_graph
from copl_ray.graph.conv import SignedBipartiteConv, signed_bipartite_conv
from copl_ray.graph.model import CoPLGNN, GNNShape
from copl_ray.graph.users import UserEmbedding, UserEmbeddings

__all__ = [
    "BipartiteGraph",
    "CoPLGNN",
    "GNNArtifacts",
    "GNNShape",
    "SignedBipartiteConv",
    "UserEmbedding",
    "UserEmbeddings",
    "adapt_unseen_users",
    "build_graph",
    "signed_bipartite_conv",
]

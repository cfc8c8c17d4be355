"""copl-ray: Ray-distributed trainer and server for CoPL personalized reward models.

Data flows one way: data -> graph (GNN, adaptation) -> mole -> reward (training)
-> eval | serving -> report -> pipeline, above the base modules (config, variants,
artifacts, tracking, ...). Imports follow the same order: the layers are declared in
pyproject.toml ``[tool.importlinter]`` and checked by ``lint-imports``. Pure model code
(``graph``, ``mole``, ``reward.model``) imports no Ray, so it can be tested alone.
"""

__version__ = "0.1.0"

"""Serving library: score batches across users from a run directory, adapt new users.

- :mod:`copl_ray.serving.scorer` — reward model + user table of a run, batched scoring.
- :mod:`copl_ray.serving.adapter` — texts -> response ids -> optimisation-free embedding.
- :mod:`copl_ray.serving.store` — users created over HTTP, shared by every replica.
- :mod:`copl_ray.serving.settings` — ServeConfig resolved for one served run.

The HTTP layer lives in ``serve_app/`` and imports this package, never the reverse.
"""

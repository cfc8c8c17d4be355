"""Ray Serve application of copl-ray (thin: all logic lives in ``copl_ray.serving``)."""

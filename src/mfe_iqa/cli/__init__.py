"""Hydra entry points: the only place where config, data, model and trainer meet."""

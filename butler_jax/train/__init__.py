"""Predictor training: config, data, mesh + shardings, logit-MSE / KL loss, train step, checkpoints, loop.

Entry point: `butler_jax.train.loop.train(load_run_config(path, overrides), resume)`, or the
`train.py` CLI.
"""

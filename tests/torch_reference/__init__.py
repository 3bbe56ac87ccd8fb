"""PyTorch references of the TokenButler predictors, written from the specs (tests only)."""

"""Evaluation: perplexity, RULER, the synthetic co-reference task, data loading and scoring."""

"""Evaluation: held-out loss / perplexity and zero-shot multiple choice the way lm-eval scores it."""

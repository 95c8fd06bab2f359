"""Batch evaluation on the twin and the end-to-end demo."""

"""Weakly supervised training, its data, and evaluation."""

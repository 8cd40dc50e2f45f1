"""Evaluation: per-label metrics in millimetres and folder-against-folder reports."""

"""Adapters between detune and training frameworks; only ``ultralytics.py`` imports Ultralytics."""

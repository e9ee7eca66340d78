"""Trainers behind one seam: ``base.py`` (the ``fit`` protocol every trainer implements) and
``ultralytics.py`` (the only module that imports Ultralytics and torch)."""

__all__: list[str] = []

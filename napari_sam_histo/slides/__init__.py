"""Slides and images as sources of tiles: lazy, level by level, with a cheap stable identity."""

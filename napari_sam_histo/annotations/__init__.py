"""Annotations as vector geometry in level-0 pixels: reading (GeoJSON, ASAP XML) and rasterising."""

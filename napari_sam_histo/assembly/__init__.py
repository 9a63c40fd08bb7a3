"""Builds what a UI annotates with, without Qt: the slide source, the predictor with its embedding
cache, the annotator and the slide's learning (``annotating``). The napari dock asks for one here
and only lays out, forwards and draws."""

"""The interactive engine (no Qt): tiles, image conversion, embedding cache, predictor, click session."""

"""Automatic click evaluation (RITM protocol): the clicker, the metrics, one sample's run, the
benchmarks of models on patches and at slide scale, and their reports. No Qt here."""

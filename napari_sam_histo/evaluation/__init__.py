"""Automatic click evaluation (RITM protocol): the clicker now; metrics and runner follow."""

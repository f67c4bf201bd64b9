"""Pipeline stages: pure functions over records around model calls."""

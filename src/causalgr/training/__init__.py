"""Training, evaluation, metrics and the formulation comparison (DESIGN.md §4)."""

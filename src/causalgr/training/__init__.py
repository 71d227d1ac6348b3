"""Training, evaluation, metrics and the formulation comparison (docs/design.md §4)."""

"""Data: sources → canonical event table → per-user sequences → batches (docs/design.md §3)."""

"""Data: sources → canonical event table → per-user sequences → batches (DESIGN.md §3)."""

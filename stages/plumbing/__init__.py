"""Shared plumbing of the stages: params schema, output layout, artifact records, entry points, live progress."""

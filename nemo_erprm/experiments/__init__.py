"""Pipelines of the project's tools: the demo and controlled experiments (each stage a real CLI run)."""

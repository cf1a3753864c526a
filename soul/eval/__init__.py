"""Evaluation utilities for soul."""

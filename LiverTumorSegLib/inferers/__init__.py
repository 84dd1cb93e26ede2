"""Inference strategies on top of the single-stage corridor (``inference.segment``)."""

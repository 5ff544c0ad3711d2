"""Nearest-neighbour and statistical diagnostics of the modality gap, and the HTML report."""

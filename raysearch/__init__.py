"""raysearch: find the pre-training objective mix of a jet foundation model per downstream task."""

__version__ = "0.1.0"

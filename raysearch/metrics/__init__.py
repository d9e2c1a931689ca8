"""Downstream metrics: classification (ROC-based) and generation (JetNet definitions)."""

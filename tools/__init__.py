"""Layer 8: tooling outside the library layers (toy models, comparisons, model builds)."""

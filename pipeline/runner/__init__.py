"""Layer 4: stage base class and registry, run folders, manifests, resume, execution."""

"""Layer 2: the prompt builder, batched draws, the adaptive policy, the Δ measurement."""

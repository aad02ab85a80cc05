"""Layer 0: the prompt row, answers, Δ maths, images, shard IO, config, reports, errors."""

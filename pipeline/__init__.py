"""DeltaPrompts core library: config, run folders, shards, execution, engines, answers, Δ."""

__version__ = "0.1.0"

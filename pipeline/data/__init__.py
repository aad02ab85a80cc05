"""Layer 3: the one loader, the dataset card, the push to the Hub."""

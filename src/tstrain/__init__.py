"""tstrain: Token Superposition Training."""

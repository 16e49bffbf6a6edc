"""CLI commands about models and weights: list, flops, convert."""

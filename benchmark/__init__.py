"""cleanbench: backdoor attacks and defenses for CLIP-style contrastive models, benchmarked end to end."""

__version__ = "0.1.0"

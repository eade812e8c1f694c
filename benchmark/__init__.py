"""cleanbench: backdoor attacks and defenses for CLIP-style contrastive models, benchmarked end to end."""

__version__ = "0.1.0"

from benchmark import deprecations as _deprecations  # noqa: E402  (old import paths answered from the one table)

_deprecations.install()

"""Augmented views shared by the methods that train on an original and an augmented copy of each pair (CleanCLIP
and SSL-only, RoCLIP, SafeCLIP, the ``clip+ssl`` victim objective) and by BadCLIP's trigger optimisation.

- :mod:`benchmark.augment.image`: AutoAugment (ImageNet policy) a batch of uint8 images at a time.
- :mod:`benchmark.augment.text`: EDA captions, seeded, from WordNet's database files.
- :mod:`benchmark.augment.views`: shuffled batches of original and augmented views of a split's pairs.

The loss on such batches, CLIP plus the in-modal self-supervised term, is :func:`benchmark.training.clip_ssl_loss`.
"""

"""Which seeds choose settings and which report them: selection and report kept apart.

Picking the best of many settings on a set of images and reporting that best on the same images flatters
it (selection bias, the "winner's curse"). Sweeps choose on the validation seeds; `sdlab eval` reports on
the held-out seeds by default. Image i of a sample has seed SEED + i; a sample has at most 1,000 images
(100 per digit), far below the gap between the two.
"""

VALIDATION_SEED = 0
HELD_OUT_SEED = 100_000

"""The bundled demo: a synthetic shapes data set with known object masks, and its classifier.

- :mod:`xaiserve.demo.shapes` generates the data set deterministically from a seed.
- :mod:`xaiserve.demo.train` trains the small CNN and exports it to ``models/shapes/1``.
"""

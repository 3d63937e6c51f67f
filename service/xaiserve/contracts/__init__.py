"""Leaf contracts: the protocols and value types that several layers share.

Nothing here imports another ``xaiserve`` module except :mod:`xaiserve.errors` (the domain
exceptions, themselves a leaf), so any layer may depend on these modules without an upward
edge. ``images`` (image batches), ``models`` (the black-box / white-box model protocols and the
torch backend a white-box model lends), ``input`` (a model's input grid and preprocessing),
``names`` (names that address folders: models, versions, data sets, support sets) and
``footprint`` (a request's declared peak memory, and batch sizes from a memory budget).
"""

"""Transforms between the input grid and the network grid.

- :mod:`.restore`: the whole way back, from probabilities on the network grid (or on a sub-box
  of it) to probabilities and labels on the input grid. The way there is
  :func:`LiverTumorSegLib.preprocessing.preprocess_image`.
"""

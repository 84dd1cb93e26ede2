"""Small torch-free helpers shared by the library, the Slicer module and training.

- :mod:`.files`: hashing, weight sidecar paths, output-path checks and atomic writes (standard
  library only: the Slicer module's core imports it in Slicer's own process).
- :mod:`.config`: strict ``from_dict`` / ``to_dict`` for the JSON-serialisable config dataclasses.
- :mod:`.regions`: bounding boxes of masks and the maximum diameter of a point set (numpy/scipy).
- :mod:`.options`: options declared once as dataclass fields; their ``metadata`` makes the
  command-line flags (:func:`~.options.add_arguments`) and a child's argument list.
"""

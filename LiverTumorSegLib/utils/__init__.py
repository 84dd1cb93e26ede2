"""Small torch-free helpers shared by the library, the Slicer module and training.

- :mod:`.files`: hashing, weight sidecar paths, output-path checks and atomic writes.
- :mod:`.config`: strict ``from_dict`` / ``to_dict`` for the JSON-serialisable config dataclasses.
- :mod:`.options`: options declared once as dataclass fields; their ``metadata`` makes the
  command-line flags (:func:`~.options.add_arguments`) and a child's argument list.
"""

"""TensorRT engines for a bundle: ``build`` (``tiue-export build-trt``), ``runtime`` (the
``--backend tensorrt`` pipeline) and ``checks`` (is TensorRT / a GPU here, do the engines fit it).

Importing this package imports neither tensorrt nor cuda-python: ``checks`` imports them when a
command needs them and raises :class:`~tiue_export.errors.MissingDependency` naming the install.
"""

"""The harness, outside the product rooms: benchmarks that print figures (``medversa bench ...``)
and the real peers they and the tests start (a throwaway Orthanc, dcmtk's programs, loopback ports).

Modules: :mod:`.node_ingest`, :mod:`.node_latency` and :mod:`.node_load` (the node's SCP and
pipeline), :mod:`.inference_speed` (the model), :mod:`.training_speed` (the trainer),
:mod:`.synthetic` (their synthetic studies), :mod:`.local_orthanc` and :mod:`.peers`, and
:mod:`.cli` (the ``bench`` command group the CLI root registers). No product room imports this package.
"""

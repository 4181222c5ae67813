"""The DICOM node service: SCP, spool, jobs, queue, priors, export.

The top room: it imports ``medversa.dicom_mapping`` and ``medversa.inference`` and nothing
imports it except the command line (``node.cli``), so the package exports nothing.
"""

__all__: list[str] = []

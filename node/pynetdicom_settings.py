"""pynetdicom's process-wide switches the node depends on, set in one place.

pynetdicom keeps a few behaviours in module-level switches (``pynetdicom._config``) that
apply to every AE of the process. The node sets them explicitly when it starts a DICOM
service, never as a side effect of an import:

- ``LOG_REQUEST_IDENTIFIERS`` / ``LOG_RESPONSE_IDENTIFIERS`` off: pynetdicom logs C-FIND,
  C-GET and C-MOVE identifiers (Patient ID, names...) at INFO by default; the node never logs
  patient identifiers. Set before any association, SCU (:func:`medversa.node.scu.association.make_ae`)
  or SCP (:meth:`medversa.node.scp.StorageSCP.start`).
- ``STORE_RECV_CHUNKED_DATASET`` on for a process that runs our Storage SCP: a received data set
  goes to disk fragment by fragment instead of into memory (:func:`medversa.node.scp.route_chunked_receive`
  says where the file goes). Handlers of other listeners in the process still read
  ``event.dataset`` as before; pynetdicom reads it from the file.
"""

from __future__ import annotations

from pynetdicom import _config as pynetdicom_config


def configure_pynetdicom(*, chunked_receive: bool = False) -> None:
    """Set pynetdicom's switches for the node (module docstring); idempotent.

    Parameters
    ----------
    chunked_receive
        Also receive C-STORE data sets in chunks to disk (the node's SCP); never switched back
        off, since a listener started earlier in the process relies on it.
    """
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    if chunked_receive:
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True

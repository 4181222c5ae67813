"""medversa-node: a PACS-integrated DICOM AI node running MedVersa.

The rooms of the product install as subpackages of this namespace:
``medversa.inference`` (the model), ``medversa.dicom_mapping`` (DICOM in/out),
``medversa.node`` (the service) and ``medversa.training`` (offline training).
"""

__version__ = "0.1.0"

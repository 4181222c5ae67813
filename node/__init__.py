"""The DICOM node service: SCP, spool, jobs, queue, priors, export (issue 4)."""

"""Readers for the MedInterp sources in their published formats, and for medinterp-mini."""

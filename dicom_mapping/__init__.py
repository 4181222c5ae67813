"""DICOM in -> model inputs, model outputs -> SR / SEG / presentation states."""

"""Drift analysis for lorascope: representation similarity (CKA, cosine), weight-update
spectra (stable/effective rank, intruder dimensions) and the statistics used to read them.

Pure numpy/scipy, float64 throughout; nothing here imports torch.
"""

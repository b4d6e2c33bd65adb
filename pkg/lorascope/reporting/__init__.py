"""Reporting helpers for the drift and report phases: provenance (hardware, package versions), the figures and the
markdown of ANALYSIS_REPORT.md. No torch import here: the report runs in the CPU image."""

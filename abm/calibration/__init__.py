"""Calibration of model parameters against observed targets (``tme calibrate``, docs/CALIBRATION.md)."""

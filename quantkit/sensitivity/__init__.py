"""quantkit.sensitivity (arXiv 2407.05858 §3.3/§3.4): built on the calibration statistics."""

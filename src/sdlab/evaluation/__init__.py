"""Measuring generated images with numbers: a digit classifier's verdicts and features."""

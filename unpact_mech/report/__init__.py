"""Figures (seaborn) and the HTML report."""

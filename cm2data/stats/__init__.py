"""Pure statistics shared by the toolkit's measurements (no I/O). :mod:`cm2data.stats.agreement`: agreement of
binary labels (Cohen's κ, accuracy, confusion matrix, bootstrap confidence intervals)."""

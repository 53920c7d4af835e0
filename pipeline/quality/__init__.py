"""The curation-quality meter: known label noise, a known-truth synthetic world, and the
figures (flip detection, recycling, RM accuracy with intervals) that say what curation caught."""

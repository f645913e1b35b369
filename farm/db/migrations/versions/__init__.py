"""Migration scripts, one per revision; a package so that they are installed with the farm."""

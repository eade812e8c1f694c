"""Reading results files into tables, plots and an HTML page. Imports no torch: it reads files only."""

# The verdict rule's defaults, here so the command line shows them without importing pandas or scipy.
DEFAULT_THRESHOLD = 0.5  # no-defense ASR from which an attack counts as having taken
DEFAULT_MAX_CA_COST = 0.05  # largest CA cost (absolute) at which a defense is still ranked

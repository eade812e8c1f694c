"""Reading results files into tables, plots and an HTML page. Imports no torch: it reads files only."""

"""``devcluster top``: the terminal front end (textual). Internal."""

"""Tables and reports of results."""

"""Terminal UI (Textual) over the toolkit core."""

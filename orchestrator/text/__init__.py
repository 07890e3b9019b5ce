"""Text a model wrote: fences, JSON and its schemas, token counts, and escaping for display."""

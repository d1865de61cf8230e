"""Developer tools: the embedded stack, the demo and synthetic billing; production never imports them."""

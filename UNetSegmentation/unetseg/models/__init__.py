"""Model packages (manifest + weights), safe archives, the catalog, and the formats that import into them."""

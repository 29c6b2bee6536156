"""Service layer: the logic behind the routes, the CLI and the workers (routes stay thin)."""

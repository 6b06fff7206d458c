"""Templates and static assets served by the proxy."""

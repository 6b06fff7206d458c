"""The proxy: the one public entry (web API, SSH jump host, Kubernetes)."""

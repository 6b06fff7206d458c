"""The session layer every protocol shares: SSH on a node, agentless relays at the proxy,
later Kubernetes exec and the web terminal."""

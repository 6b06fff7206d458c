"""The node service: the SSH server that runs sessions as local Unix users."""

"""Talking to the auth API from another process (proxy, node, cgctl, cgsh)."""

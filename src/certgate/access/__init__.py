"""Decisions shared by auth, proxy, node and kube: role evaluation, templates and the
cached access checker."""

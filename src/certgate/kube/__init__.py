"""The kube service: forwards Kubernetes API calls from the proxy to API servers."""

"""The Kubernetes operator: policies in, proxy Deployments out (kopf handlers and pure builders)."""

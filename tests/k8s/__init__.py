"""The ``k8s`` runner (plugins/taskmesh-k8s) end to end: the real Kubernetes client against a fake API server."""

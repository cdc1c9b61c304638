"""`sodctl` (also the kubectl plugin `kubectl-sod`)."""

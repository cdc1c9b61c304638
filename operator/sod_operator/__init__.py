"""sod-operator: Security on Demand for KubeVirt (Jamkhedkar et al., 2013, on Kubernetes)."""

__version__ = "0.1.0"

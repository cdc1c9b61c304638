"""Build tools: generate the CRDs, the chart values schema and RBAC from the Python sources."""

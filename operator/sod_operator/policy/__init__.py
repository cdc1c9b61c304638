"""The pure policy core: request resolution, matching, placement, relocation planning.

No Kubernetes, kopf or metrics imports (enforced by import-linter); time is passed in.
"""

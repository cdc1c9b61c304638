"""`SecurityPackage`: a named bundle of options, properties and scope (e.g. `medical-records`).

The spec model lives with the request models (`security.py`) because a package is a request
that has a name; this module gives the kind its own home for the CRD generator.
"""

from sod_operator.api.v1alpha1.security import SecurityPackageSpec

__all__ = ["SecurityPackageSpec"]

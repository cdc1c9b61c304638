"""Names that appear on the wire: API group, label keys, annotations, finalizers.

Defined once and pinned by tests: a persisted name is forever.
"""

from typing import Final

GROUP: Final = "sod.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CATEGORY: Final = "sod"

# Node labels written only by the verifier. NodeRestriction forbids kubelets to set keys under
# `*.node-restriction.kubernetes.io/`, so a compromised node cannot label itself trusted.
NODE_LABEL_PREFIX: Final = "sod.node-restriction.kubernetes.io/"
PROFILE_LABEL_PREFIX: Final = f"{NODE_LABEL_PREFIX}profile."
VERIFIED: Final = "verified"


# A label name (the part after the prefix) is at most 63 characters: "profile." + name.
MAX_PROFILE_NAME: Final = 63 - len("profile.")

# A SecureVM's name becomes the value of the `sod.dev/securevm` label on its VM (and the VM's
# name): a label value is at most 63 characters.
MAX_SECUREVM_NAME: Final = 63


def profile_label(profile_name: str) -> str:
    """The node label key that says the verifier verified `profile_name` on the node."""
    return f"{PROFILE_LABEL_PREFIX}{profile_name}"


# Bookkeeping on our own objects and on the VMs we manage.
ANNOTATION_PREFIX: Final = "sod.dev/"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "sod-operator"
SECUREVM_LABEL: Final = f"{ANNOTATION_PREFIX}securevm"
FINALIZER: Final = f"{ANNOTATION_PREFIX}finalizer"
KOPF_PROGRESS_PREFIX: Final = "kopf.sod.dev"

# A label no node ever carries (the verifier never writes it): the one required term of a VM
# whose request no profile satisfies, so it is scheduled nowhere rather than anywhere.
NO_COMPLIANT_NODE_LABEL: Final = f"{NODE_LABEL_PREFIX}no-compliant-node"

# The sandbox's fake nodes: which security architecture (a profile name, or `plain` for none) a
# node simulates. Set by `sodctl sandbox up --nodes ARCH=N,...`; the simulated evidence source of
# that node's agent claims it. A kwok node label, never read by the verifier as evidence.
SIMULATED_ARCHITECTURE_LABEL: Final = f"{ANNOTATION_PREFIX}simulated-architecture"

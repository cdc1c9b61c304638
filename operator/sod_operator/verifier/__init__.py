"""The verifier: the Kubernetes-facing shell around `sod_operator.attestation`.

It runs as its **own process and Deployment** (`sod-verifier`), not inside the operator:

* it is the only identity allowed to patch Nodes (and a ValidatingAdmissionPolicy confines it
  to our trust labels), while the operator needs no Node write at all — a separate
  ServiceAccount keeps that right out of the much larger operator;
* it holds the EK CA bundle and the only code path that turns evidence into trust; a bug or
  compromise in placement/migration code cannot mint trust labels;
* it scales and fails independently: a verifier restart loses nothing (all state is in
  NodeAttestation status and node labels) and never interrupts reconciliation of VMs.

What it does (`controller.Verifier`): issues nonces into each NodeAttestation's status,
enrolls nodes (EK certificate chain against the configured CA bundle; MakeCredential
challenge, activation proof), verifies every new evidence against every
ServerSecurityProfile's attestation policy, writes per-profile verdicts and conditions,
adds/removes `sod.node-restriction.kubernetes.io/profile.<name>=verified` labels, emits
Events, exposes `sod_attestation_*` metrics on its own registry, and re-evaluates each node
when its evidence expires (fail closed: a silent agent loses its labels).
"""

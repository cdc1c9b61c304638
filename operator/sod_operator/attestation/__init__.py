"""Pure attestation verification: TPM evidence + profile policies + nonce + now → verdicts.

No Kubernetes, kopf, prometheus or tpm2-pytss here (import-linter contract `pure-core`):
`tpm` parses TPM structures and makes credentials, `ekcert` checks EK certificate chains,
`verify` checks evidence against each profile's policy, `enroll` binds AKs to EKs,
`monitor` is one level-triggered step of the trust monitor, `labels` maps verdicts to
node labels.
"""

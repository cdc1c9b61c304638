"""The `sod.dev/v1alpha1` API: SecureVM, ServerSecurityProfile, SecurityPackage, NodeAttestation."""

"""The API of sod-operator: vocabulary, constants and the `sod.dev/v1alpha1` models."""

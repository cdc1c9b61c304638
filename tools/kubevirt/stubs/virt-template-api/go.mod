// Local stand-in for kubevirt.io/virt-template-api (the Go module proxy refuses every version).
// Only the symbols virt-controller and virt-api v1.9.0 compile against; see ../../README.md.
module kubevirt.io/virt-template-api

go 1.26.0

require k8s.io/apimachinery v0.34.2

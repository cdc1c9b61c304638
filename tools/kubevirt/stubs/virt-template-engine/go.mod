// Local stand-in for kubevirt.io/virt-template-engine (the Go module proxy refuses every version).
// No package of it is compiled into virt-controller, virt-api or ../../cmd (only virtctl imports
// it), so the module holds no code: it only completes KubeVirt's module graph.
module kubevirt.io/virt-template-engine

go 1.26.0

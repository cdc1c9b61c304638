// Local stand-in for libguestfs.org/libnbd (the Go module proxy refuses its host). No package of
// it is compiled into virt-controller, virt-api or ../../cmd, so the module holds no code: it only
// completes KubeVirt's module graph.
module libguestfs.org/libnbd

go 1.26.0

// Package virttemplate stands in for kubevirt.io/virt-template-client-go/virttemplate. It has
// the shape virt-controller v1.9.0 compiles against (NewForConfig, TemplateV1beta1().RESTClient())
// but no client: NewForConfig always fails, so virt-controller stops with that error (it panics
// in pkg/controller/virtinformers.go) if it is ever asked for a VirtualMachineTemplate informer,
// which happens only with both the VirtTemplate deployment and the OCI export feature enabled.
package virttemplate

import (
	"errors"

	"k8s.io/client-go/rest"
)

// ErrStubbed says why there is no client.
var ErrStubbed = errors.New("kubevirt.io/virt-template-client-go is a local stub in this build " +
	"(the Go module proxy refuses the module): VirtualMachineTemplate is not supported; see " +
	"tools/kubevirt/README.md in sod-operator")

// Clientset is the type NewForConfig would return.
type Clientset struct{}

// TemplateV1beta1Interface is the group client the real clientset exposes.
type TemplateV1beta1Interface interface {
	RESTClient() rest.Interface
}

// NewForConfig always fails: see ErrStubbed.
func NewForConfig(*rest.Config) (*Clientset, error) { return nil, ErrStubbed }

// TemplateV1beta1 is never reached (NewForConfig returns no Clientset).
func (*Clientset) TemplateV1beta1() TemplateV1beta1Interface { return nil }

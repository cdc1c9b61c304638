// Package v1beta1 stands in for kubevirt.io/virt-template-api/core/v1beta1. It holds only the
// fields KubeVirt v1.9.0's VirtualMachineExport code reads (a template's embedded VirtualMachine,
// its parameters and its Ready condition), so the export controller compiles. The field names
// and JSON tags follow the published types; nothing else of the API is here. No client for it
// exists in this build (see the virttemplate stub), so no object of these types is ever decoded.
package v1beta1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is template.kubevirt.io/v1beta1.
var GroupVersion = schema.GroupVersion{Group: "template.kubevirt.io", Version: "v1beta1"}

// ConditionReady is the condition type a usable template carries.
const ConditionReady = "Ready"

// VirtualMachineTemplate is a parametrised VirtualMachine.
type VirtualMachineTemplate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   VirtualMachineTemplateSpec   `json:"spec,omitempty"`
	Status VirtualMachineTemplateStatus `json:"status,omitempty"`
}

// VirtualMachineTemplateSpec holds the VirtualMachine (with ${NAME} placeholders) and the
// parameters that fill it.
type VirtualMachineTemplateSpec struct {
	Parameters     []Parameter           `json:"parameters,omitempty"`
	VirtualMachine *runtime.RawExtension `json:"virtualMachine,omitempty"`
}

// Parameter is one placeholder of the template.
type Parameter struct {
	Name  string `json:"name"`
	Value string `json:"value,omitempty"`
}

// VirtualMachineTemplateStatus carries the template's conditions.
type VirtualMachineTemplateStatus struct {
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// DeepCopy returns a copy sharing nothing with t.
func (t *VirtualMachineTemplate) DeepCopy() *VirtualMachineTemplate {
	if t == nil {
		return nil
	}
	out := &VirtualMachineTemplate{TypeMeta: t.TypeMeta}
	t.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Spec.Parameters = append([]Parameter(nil), t.Spec.Parameters...)
	if t.Spec.VirtualMachine != nil {
		out.Spec.VirtualMachine = t.Spec.VirtualMachine.DeepCopy()
	}
	for i := range t.Status.Conditions {
		var c metav1.Condition
		t.Status.Conditions[i].DeepCopyInto(&c)
		out.Status.Conditions = append(out.Status.Conditions, c)
	}
	return out
}

// DeepCopyObject makes the type a runtime.Object, as KubeVirt's informer declaration requires.
func (t *VirtualMachineTemplate) DeepCopyObject() runtime.Object { return t.DeepCopy() }

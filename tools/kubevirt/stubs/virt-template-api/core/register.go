// Package api stands in for kubevirt.io/virt-template-api/core: the API group and resource
// names of VirtualMachineTemplate, with the values of the published module (upstream
// kubevirt/virt-template-api core/register.go). KubeVirt v1.9.0 uses them to index
// VirtualMachineExports by template and in the VirtualMachineExport admitter.
package api

const (
	GroupName            = "template.kubevirt.io"
	SingularResourceName = "virtualmachinetemplate"
	PluralResourceName   = SingularResourceName + "s"
)

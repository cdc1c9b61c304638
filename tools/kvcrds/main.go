// Command kvcrds prints KubeVirt's CustomResourceDefinitions for VirtualMachine,
// VirtualMachineInstance, VirtualMachineInstanceMigration and MigrationPolicy, built by
// KubeVirt's own constructors (kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components,
// the code virt-operator runs to install them), so objects written in the test bed are validated
// by KubeVirt's real schemas. The KubeVirt version is pinned in go.mod (tools/versions.env).
//
// Output: a YAML stream (default) or, with -format=json, a JSON List; metadata.creationTimestamp
// and the empty status are dropped so the objects can be created as they are.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	extv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components"
	"sigs.k8s.io/yaml"
)

func main() {
	format := flag.String("format", "yaml", "yaml (a --- separated stream) or json (a v1 List)")
	flag.Parse()

	constructors := []struct {
		name string
		new  func() (*extv1.CustomResourceDefinition, error)
	}{
		{"VirtualMachine", components.NewVirtualMachineCrd},
		{"VirtualMachineInstance", components.NewVirtualMachineInstanceCrd},
		{"VirtualMachineInstanceMigration", components.NewVirtualMachineInstanceMigrationCrd},
		{"MigrationPolicy", components.NewMigrationPolicyCrd},
	}
	var items []map[string]any
	for _, c := range constructors {
		crd, err := c.new()
		if err != nil {
			fail("building the %s CRD: %v", c.name, err)
		}
		crd.TypeMeta.APIVersion = "apiextensions.k8s.io/v1"
		crd.TypeMeta.Kind = "CustomResourceDefinition"
		raw, err := json.Marshal(crd)
		if err != nil {
			fail("encoding the %s CRD: %v", c.name, err)
		}
		var obj map[string]any
		if err := json.Unmarshal(raw, &obj); err != nil {
			fail("decoding the %s CRD: %v", c.name, err)
		}
		// Server-owned fields: an object to create carries neither.
		delete(obj, "status")
		if meta, ok := obj["metadata"].(map[string]any); ok {
			delete(meta, "creationTimestamp")
		}
		items = append(items, obj)
	}

	switch *format {
	case "json":
		out, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
		if err != nil {
			fail("encoding the list: %v", err)
		}
		os.Stdout.Write(append(out, '\n'))
	case "yaml":
		for i, obj := range items {
			out, err := yaml.Marshal(obj)
			if err != nil {
				fail("encoding YAML: %v", err)
			}
			if i > 0 {
				os.Stdout.WriteString("---\n")
			}
			os.Stdout.Write(out)
		}
	default:
		fail("unknown -format %q (want yaml or json)", *format)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kvcrds: "+format+"\n", args...)
	os.Exit(1)
}

// Command kvgen writes the objects virt-operator would install for virt-controller and virt-api,
// built by KubeVirt's own code (kubevirt.io/kubevirt/pkg/virt-operator/resource/generate, the
// constructors virt-operator runs; the version is pinned in ../../go.mod), so the test bed
// installs exactly what KubeVirt ships and nothing typed by hand:
//
//	crds.yaml, crds.json  every CRD of install/strategy.go (components.New*Crd; 20 in v1.9.0):
//	                      virt-controller starts informers for all of them
//	rbac.json             rbac.GetAllCluster (the default, admin, edit, view, instancetype-view
//	                      and migrate roles) and the ServiceAccounts, Roles, ClusterRoles and
//	                      bindings of virt-api, virt-controller and virt-handler in -namespace
//	webhooks.json         virt-api's Mutating- and ValidatingWebhookConfiguration, with
//	                      clientConfig.service (virt-api in -namespace) as generated
//
// The .json files are v1 Lists, crds.yaml a --- separated stream. metadata.creationTimestamp
// and status are dropped so the objects can be created as they are.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	extv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components"
	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/rbac"
)

// crdConstructors is the list install/strategy.go (GenerateCurrentInstallStrategy) installs.
var crdConstructors = []func() (*extv1.CustomResourceDefinition, error){
	components.NewVirtualMachineInstanceCrd, components.NewPresetCrd, components.NewReplicaSetCrd,
	components.NewVirtualMachineCrd, components.NewVirtualMachineInstanceMigrationCrd,
	components.NewVirtualMachinePoolCrd, components.NewVirtualMachineSnapshotCrd,
	components.NewVirtualMachineSnapshotContentCrd, components.NewVirtualMachineRestoreCrd,
	components.NewVirtualMachineInstancetypeCrd, components.NewVirtualMachineClusterInstancetypeCrd,
	components.NewMigrationPolicyCrd, components.NewVirtualMachinePreferenceCrd,
	components.NewVirtualMachineClusterPreferenceCrd, components.NewVirtualMachineExportCrd,
	components.NewVirtualMachineCloneCrd, components.NewVirtualMachineBackupCrd,
	components.NewVirtualMachineBackupTrackerCrd, components.NewPluginCrd, components.NewKubeVirtCrd,
}

func main() {
	out := flag.String("out", ".", "directory to write crds.yaml, crds.json, rbac.json, webhooks.json into")
	ns := flag.String("namespace", "kubevirt", "KubeVirt's install namespace")
	flag.Parse()

	crds := make([]map[string]any, 0, len(crdConstructors))
	for _, build := range crdConstructors {
		crd, err := build()
		if err != nil {
			fail("building a CRD: %v", err)
		}
		crd.APIVersion, crd.Kind = "apiextensions.k8s.io/v1", "CustomResourceDefinition"
		crds = append(crds, toMap(crd))
	}
	writeYAML(filepath.Join(*out, "crds.yaml"), crds)
	writeList(filepath.Join(*out, "crds.json"), crds)
	writeList(filepath.Join(*out, "rbac.json"), rbacObjects(*ns))
	writeList(filepath.Join(*out, "webhooks.json"), []map[string]any{
		toMap(components.NewVirtAPIMutatingWebhookConfiguration(*ns)),
		toMap(components.NewVirtAPIValidatingWebhookConfiguration(*ns)),
	})
}

// rbacObjects is the RBAC install/strategy.go installs for the components the test bed runs
// (virt-api, virt-controller) or plays (virt-handler), plus the cluster-wide user roles.
// includeNADRules=true is virt-operator's default (ExternalNetResourceInjection off).
func rbacObjects(ns string) []map[string]any {
	var objs []runtime.Object
	objs = append(objs, rbac.GetAllCluster()...)
	objs = append(objs, rbac.GetAllApiServer(ns)...)
	objs = append(objs, rbac.GetAllController(ns, true)...)
	objs = append(objs, rbac.GetAllHandler(ns)...)
	items := make([]map[string]any, 0, len(objs))
	for _, o := range objs {
		items = append(items, toMap(o))
	}
	return items
}

// toMap encodes obj without the fields only the server sets; every constructor sets its
// TypeMeta, and an object without a kind could not be created, so that is checked.
func toMap(obj any) map[string]any {
	raw, err := json.Marshal(obj)
	if err != nil {
		fail("encoding %T: %v", obj, err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		fail("decoding %T: %v", obj, err)
	}
	if m["kind"] == nil || m["apiVersion"] == nil {
		fail("%T has no apiVersion/kind", obj)
	}
	delete(m, "status")
	if meta, ok := m["metadata"].(map[string]any); ok {
		delete(meta, "creationTimestamp")
	}
	return m
}

func writeList(path string, items []map[string]any) {
	raw, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
	if err != nil {
		fail("encoding %s: %v", path, err)
	}
	write(path, append(raw, '\n'))
}

func writeYAML(path string, items []map[string]any) {
	var buf []byte
	for i, obj := range items {
		raw, err := yaml.Marshal(obj)
		if err != nil {
			fail("encoding %s: %v", path, err)
		}
		if i > 0 {
			buf = append(buf, "---\n"...)
		}
		buf = append(buf, raw...)
	}
	write(path, buf)
}

// write replaces path atomically, so a reader never sees half a file.
func write(path string, data []byte) {
	if err := os.WriteFile(path+".tmp", data, 0o644); err != nil {
		fail("%v", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kvgen: "+format+"\n", args...)
	os.Exit(1)
}

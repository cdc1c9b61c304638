{{/*
Named templates of the sod-operator chart. Every name is prefixed "sod-operator." so it cannot
collide with a parent chart's. Component templates take a dict: (dict "root" $ "component" "operator").
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "sod-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's base name: fullnameOverride, else "<release>-<chart>" (just "<release>" when the
release name already contains the chart name). 52 characters leave room for "-node-agent".
*/}}
{{- define "sod-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<component>", the name of a component's objects. */}}
{{- define "sod-operator.componentName" -}}
{{- printf "%s-%s" (include "sod-operator.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* chart label value: "<name>-<version>". */}}
{{- define "sod-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of the release (stable across upgrades: never add version labels here). */}}
{{- define "sod-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sod-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Standard labels of every object of the release (the generated CRD templates use this one). */}}
{{- define "sod-operator.labels" -}}
helm.sh/chart: {{ include "sod-operator.chart" . }}
{{ include "sod-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sod-operator
{{- with .Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component. */}}
{{- define "sod-operator.componentSelectorLabels" -}}
{{ include "sod-operator.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Standard labels of one component's objects. */}}
{{- define "sod-operator.componentLabels" -}}
{{ include "sod-operator.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
The ServiceAccount name of a component; .values is the component's values
(e.g. .Values.operator), which hold serviceAccount.{create,name}.
*/}}
{{- define "sod-operator.serviceAccountName" -}}
{{- if .values.serviceAccount.create -}}
{{- default (include "sod-operator.componentName" .) .values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: "<repository>@<digest>", else "<repository>:<tag or appVersion>". */}}
{{- define "sod-operator.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* imagePullSecrets of every pod, from global.imagePullSecrets (a list of Secret names). */}}
{{- define "sod-operator.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . | quote }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* priorityClassName of a component's pods: its own, else global.priorityClassName. */}}
{{- define "sod-operator.priorityClassName" -}}
{{- with (default .root.Values.global.priorityClassName .values.priorityClassName) -}}
priorityClassName: {{ . | quote }}
{{- end -}}
{{- end -}}

{{/*
The container security context of the operator and the verifier: non-root, read-only root
filesystem, no privilege escalation, no capabilities.
*/}}
{{- define "sod-operator.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The pod security context of the operator and the verifier (the images' non-root user). */}}
{{- define "sod-operator.restrictedPodSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* HTTP probes on the health port; .probe is a Probe value, .path the endpoint. */}}
{{- define "sod-operator.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port | default "health" }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end -}}

{{/* Fails the render when a component runs several replicas without leader election. */}}
{{- define "sod-operator.checkReplicas" -}}
{{- if and (gt (int .values.replicaCount) 1) (not .values.leaderElection.enabled) -}}
{{- fail (printf "%s.replicaCount is %d but %s.leaderElection.enabled is false: replicas would reconcile the same objects at once; enable leader election or set replicaCount to 1" .name (int .values.replicaCount) .name) -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap holding the verifier's EK CA bundle (key ek-ca-bundle.pem). */}}
{{- define "sod-operator.ekCaBundleConfigMap" -}}
{{- default (printf "%s-ek-ca-bundle" (include "sod-operator.fullname" .)) .Values.verifier.ekCaBundle.configMapName -}}
{{- end -}}

{{/*
The ConfigMap, in the release namespace, in which the verifier publishes the fleet's nonces and
which the node-agents read (the suffix is CHALLENGES_SUFFIX of sod_operator.api.v1alpha1.nodeattestation).
*/}}
{{- define "sod-operator.challengesConfigMap" -}}
{{- printf "%s-attestation-challenges" (include "sod-operator.fullname" .) -}}
{{- end -}}

{{/*
The ConfigMap, in the release namespace, in which the verifier renews the fleet's verdict expiries
and which the operator reads (the suffix is RENEWALS_SUFFIX of sod_operator.api.v1alpha1.nodeattestation).
*/}}
{{- define "sod-operator.renewalsConfigMap" -}}
{{- printf "%s-attestation-renewals" (include "sod-operator.fullname" .) -}}
{{- end -}}

{{/* The metrics Service of a component (a DNS-1035 label: at most 63 characters). */}}
{{- define "sod-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "sod-operator.componentName" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

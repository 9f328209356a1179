{{/* Names, labels and the one list of RBAC rules every Role and ClusterRole shares. */}}

{{- define "tritonresnet-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tritonresnet-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tritonresnet-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tritonresnet-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "tritonresnet-operator.labels" -}}
{{ include "tritonresnet-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tritonresnet
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "tritonresnet-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tritonresnet-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tritonresnet-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tritonresnet-operator.controlKeySecret" -}}
{{- if .Values.tritonAccess.controlKey.existingSecret -}}
{{- .Values.tritonAccess.controlKey.existingSecret -}}
{{- else if .Values.tritonAccess.controlKey.create -}}
{{- printf "%s-triton-control-key" (include "tritonresnet-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tritonresnet-operator.clusterwide" -}}
{{- if not .Values.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{/*
What the operator does in a namespace it serves: exactly the requests its
ServiceAccount made across the e2e suite, from the apiserver's audit log
(tests/e2e/rbac_observed.json; tests/e2e/test_permissions.py compares the two,
tests/unit/test_rbac.py this list with the file). Keep manifests/base/rbac.yaml
equal. Children are listed and watched (the cache), created when the cache has
not seen them, read by name only when a create answers 409 (the name is taken:
ours if the watch is behind, else someone else's), and server-side applied
(patch) when they differ from what the operator renders; never updated. A
TritonResNet is only read, and written through its status.
*/}}
{{- define "tritonresnet-operator.rules" -}}
- apiGroups: [tritonresnet.io]
  resources: [tritonresnets]
  verbs: [list, watch]
- apiGroups: [tritonresnet.io]
  resources: [tritonresnets/status]
  verbs: [patch]
# Children carry an owner reference with blockOwnerDeletion; clusters with the
# OwnerReferencesPermissionEnforcement admission plugin (the test ground has it)
# require this to create them. A check in admission, so no request of its own.
- apiGroups: [tritonresnet.io]
  resources: [tritonresnets/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# delete: an older spec's unfinished Jobs, and a failed build once its spec is fixed.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create, get, patch, delete]
# delete: the HPA when spec.serving.autoscaling is removed.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch, create, get, patch, delete]
# Never deleted by the operator: they go with the TritonResNet (garbage collector).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, get, patch]
- apiGroups: [""]
  resources: [services, persistentvolumeclaims]
  verbs: [list, watch, create, get, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, get, patch]
# Who may reach each resource's Triton pods.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, get, patch]
# Each resource's Triton control credential. Create only: the operator never reads a
# Secret (a name taken answers 409, and the name is a digest only it can compute).
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}

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

{{- define "tritonresnet-operator.clusterwide" -}}
{{- if not .Values.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{/*
What the operator does in a namespace it serves. Keep in step with the USED
table in tests/unit/test_rbac.py, which says which module needs each line, and
with manifests/base/rbac.yaml. The operator writes with server-side apply
(create + patch), never update, and never touches the spec or metadata of a
TritonResNet. `get` is granted wherever `list` is: it reveals nothing more.
*/}}
{{- define "tritonresnet-operator.rules" -}}
- apiGroups: [tritonresnet.io]
  resources: [tritonresnets]
  verbs: [get, list, watch]
- apiGroups: [tritonresnet.io]
  resources: [tritonresnets/status]
  verbs: [patch]
# Children carry an owner reference with blockOwnerDeletion; clusters with the
# OwnerReferencesPermissionEnforcement admission plugin require this to set it.
- apiGroups: [tritonresnet.io]
  resources: [tritonresnets/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, persistentvolumeclaims]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}

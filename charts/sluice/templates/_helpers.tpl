{{/*
Name of the chart, truncated to the 63 characters of a DNS label.
*/}}
{{- define "sluice.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: the release name, with the chart name unless it is
already part of it.
*/}}
{{- define "sluice.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Labels of every object of the release.
*/}}
{{- define "sluice.labels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/*
Labels that select the operator's pod; never changed between upgrades.
*/}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Name of the ServiceAccount the operator runs as.
*/}}
{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator's image: repository with the digest when one is given, else with the tag
(defaulting to the chart's appVersion).
*/}}
{{- define "sluice.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The rules of the operator's role: exactly what it reads, applies and deletes.
*/}}
{{- define "sluice.rules" -}}
# The policies: watched by kopf, which also patches their annotations (handler progress).
- apiGroups: [sluice.dev]
  resources: [llmbatchpolicies, toolcachepolicies]
  verbs: [get, list, watch, patch]
- apiGroups: [sluice.dev]
  resources: [llmbatchpolicies/status, toolcachepolicies/status]
  verbs: [get, patch]
# Setting blockOwnerDeletion on children needs this where the
# OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, for one).
- apiGroups: [sluice.dev]
  resources: [llmbatchpolicies/finalizers, toolcachepolicies/finalizers]
  verbs: [update]
# The proxies' objects, by server-side apply (create + patch), watched for drift. A config's
# ConfigMaps are one per config hash: the older ones are deleted once a rollout is complete.
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# Budgets and monitors are also deleted when a policy stops asking for them.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, create, patch, delete]
# spec.proxy.autoscaling: a HorizontalPodAutoscaler, deleted when autoscaling is turned off.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, create, patch, delete]
# Referenced Secrets are read by name (never listed), to check them and to hash what the proxy
# reads of them (so a rotation rolls the pods); the admin token's Secret is created once.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
# Ready proxy pods are listed for their IPs, to read their metrics (hit ratio, MCP servers, tools).
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

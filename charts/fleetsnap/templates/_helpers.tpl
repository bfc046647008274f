{{/* Name of the chart. */}}
{{- define "fleetsnap.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the operator's objects. Fixed (not release-prefixed) so that documentation,
     `kubectl create token fleetsnap-operator` and alert queries stay predictable; install one
     release per cluster. */}}
{{- define "fleetsnap.fullname" -}}
fleetsnap-operator
{{- end -}}

{{- define "fleetsnap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fleetsnap.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fleetsnap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleetsnap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "fleetsnap.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "fleetsnap.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fleetsnap
{{- end -}}

{{- define "fleetsnap.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* The six fleetsnap.io resources (plural names). */}}
{{- define "fleetsnap.resources" -}}
- hosts
- backuprepositories
- backuppolicies
- retentionpolicies
- verifypolicies
- restores
{{- end -}}

{{- define "fleetsnap.subresources" -}}
- hosts/status
- backuprepositories/status
- backuppolicies/status
- retentionpolicies/status
- verifypolicies/status
- restores/status
- hosts/finalizers
- backuprepositories/finalizers
- backuppolicies/finalizers
- retentionpolicies/finalizers
- verifypolicies/finalizers
- restores/finalizers
{{- end -}}

{{/* Rules the operator needs wherever it watches objects (ClusterRole or per-namespace Role). */}}
{{- define "fleetsnap.watchRules" -}}
# Read the desired state.
- apiGroups: [fleetsnap.io]
  resources:
{{ include "fleetsnap.resources" . | indent 4 }}
  verbs: [get, list, watch]
# Add/remove the operator's finalizer (metadata only; see specGuard). `patch`, never `update`:
# the operator never sends a whole object back, so it cannot overwrite a user's spec.
- apiGroups: [fleetsnap.io]
  resources:
{{ include "fleetsnap.resources" . | indent 4 }}
  verbs: [patch]
# Write status (and finalizers via the subresource, for owner-reference checks).
- apiGroups: [fleetsnap.io]
  resources:
{{ include "fleetsnap.subresources" . | indent 4 }}
  verbs: [get, patch, update]
# SSH keys, repository passwords and S3 credentials: read only.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
# Events on failures and recoveries.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* The chart name, or nameOverride. */}}
{{- define "starling-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Prefix of every object name: fullnameOverride, else the release name when it already ends in
"operator", else "<release>-operator" (release "starling" gives "starling-operator").
*/}}
{{- define "starling-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if hasSuffix "operator" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* name-version, for the helm.sh/chart label. */}}
{{- define "starling-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the operator's pods; never change them in an upgrade. */}}
{{- define "starling-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "starling-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "starling-operator.labels" -}}
helm.sh/chart: {{ include "starling-operator.chart" . }}
{{ include "starling-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: starling
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "starling-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "starling-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "starling-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Lease for leader election. */}}
{{- define "starling-operator.leaseName" -}}
{{- default (include "starling-operator.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/* Where the MqttCluster from values goes: the watched namespace, else the release's. */}}
{{- define "starling-operator.clusterNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace -}}
{{- end -}}

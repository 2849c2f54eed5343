{{- define "modeldeploy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modeldeploy.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "modeldeploy.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "modeldeploy.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modeldeploy.labels" -}}
app.kubernetes.io/name: {{ include "modeldeploy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "modeldeploy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modeldeploy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modeldeploy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modeldeploy.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /* The image tag: the chart's appVersion when empty. A number is used as
       written (`--set image.tag=2`, `tag: 1.2`); a whole number read from a
       values file comes as a float and is printed without an exponent. Quote
       tags such as "1.10", which YAML reads as the number 1.1. */ -}}
{{- define "modeldeploy.imageTag" -}}
{{- $tag := .Values.image.tag -}}
{{- if and (kindIs "float64" $tag) (eq $tag (floor $tag)) -}}
{{- $tag | int64 -}}
{{- else -}}
{{- $tag | toString | default .Chart.AppVersion -}}
{{- end -}}
{{- end -}}

{{- /* The ModelDeployments this release acts on: shard.selector, else
       modeldeploy.io/shard=<shard.name>, else all (blank). */ -}}
{{- define "modeldeploy.shardSelector" -}}
{{- if and .Values.shard.selector (not .Values.shard.name) -}}
{{- fail "shard.selector needs shard.name: it names this shard's Lease, and shards without one would share a Lease (one would stand by forever)" -}}
{{- end -}}
{{- if .Values.shard.selector -}}
{{- .Values.shard.selector -}}
{{- else if .Values.shard.name -}}
{{- printf "modeldeploy.io/shard=%s" .Values.shard.name -}}
{{- end -}}
{{- end -}}

{{- /* Each shard elects its leader through its own Lease. */ -}}
{{- define "modeldeploy.leaseName" -}}
{{- if .Values.shard.name -}}
{{- printf "%s-%s" .Values.leaderElection.leaseName .Values.shard.name -}}
{{- else -}}
{{- .Values.leaderElection.leaseName -}}
{{- end -}}
{{- end -}}

{{/* Names, labels and the per-stage pieces every template shares. */}}

{{- define "fraudpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or just <release> when it already contains the chart name. */}}
{{- define "fraudpipe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of a stage's resources. Call with (dict "root" $ "stage" "infer"). */}}
{{- define "fraudpipe.stageName" -}}
{{- printf "%s-%s" (include "fraudpipe.fullname" .root | trunc 52 | trimSuffix "-") .stage }}
{{- end }}

{{- define "fraudpipe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: name + instance (+ component for a stage). Never change on upgrade. */}}
{{- define "fraudpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fraudpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fraudpipe.labels" -}}
helm.sh/chart: {{ include "fraudpipe.chart" . }}
{{ include "fraudpipe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fraudpipe
{{- end }}

{{/* Labels of a stage's resources. Call with (dict "root" $ "stage" "infer"). */}}
{{- define "fraudpipe.stageLabels" -}}
{{ include "fraudpipe.labels" .root }}
app.kubernetes.io/component: {{ .stage }}
{{- end }}

{{- define "fraudpipe.stageSelectorLabels" -}}
{{ include "fraudpipe.selectorLabels" .root }}
app.kubernetes.io/component: {{ .stage }}
{{- end }}

{{- define "fraudpipe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fraudpipe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fraudpipe.claimName" -}}
{{- default (printf "%s-data" (include "fraudpipe.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* The image of a stage: the GPU tag for gpu stages. Call with (dict "root" $ "device" "gpu"). */}}
{{- define "fraudpipe.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag }}
{{- if eq .device "gpu" }}
{{- $tag = default (printf "%s-gpu" $tag) .root.Values.image.gpuTag }}
{{- end }}
{{- printf "%s:%s" .root.Values.image.repository $tag }}
{{- end }}

{{/* The shared volume and /tmp, as pod volumes. */}}
{{- define "fraudpipe.volumes" -}}
- name: data
{{- if or .Values.persistence.enabled .Values.persistence.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ include "fraudpipe.claimName" . }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{/* The pipeline configuration: the user's `config` plus what the chart owns. */}}
{{- define "fraudpipe.config" -}}
{{- $dashboard := dict "host" "0.0.0.0" "port" .Values.dashboard.port "allowed_hosts" (include "fraudpipe.dashboardHosts" . | fromJsonArray) }}
{{- $owned := dict "data_dir" .Values.persistence.mountPath "metrics" (dict "host" "0.0.0.0" "port" .Values.metrics.port) "dashboard" $dashboard }}
{{- toYaml (merge $owned (deepCopy .Values.config)) }}
{{- end }}

{{/* The Host names the dashboard answers to, as JSON: what `kubectl port-forward` sends
(localhost, 127.0.0.1, [::1]), its Service's in-cluster names, then dashboard.allowedHosts and
the Ingress's hosts. */}}
{{- define "fraudpipe.dashboardHosts" -}}
{{- $svc := include "fraudpipe.stageName" (dict "root" . "stage" "dashboard") }}
{{- $ns := .Release.Namespace }}
{{- $own := list "localhost" "127.0.0.1" "[::1]" $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) }}
{{- $ingress := ternary .Values.dashboard.ingress.hosts list .Values.dashboard.ingress.enabled }}
{{- concat $own .Values.dashboard.allowedHosts $ingress | uniq | toJson }}
{{- end }}

{{/* Deployment name by stage, for every enabled stage the dashboard may scale, as JSON
({"gather": "<fullname>-gather", ...}). Never the dashboard itself: a page with the token
must not be able to scale away the dashboard it is using, nor scale it up. */}}
{{- define "fraudpipe.deployments" -}}
{{- $out := dict }}
{{- range $name, $s := .Values.stages }}
{{- if and $s.enabled (ne $name "dashboard") }}
{{- $_ := set $out $name (include "fraudpipe.stageName" (dict "root" $ "stage" $name)) }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* The Secret holding the dashboard's token (key `token`): the user's own or the chart's. */}}
{{- define "fraudpipe.dashboardSecretName" -}}
{{- default (printf "%s-dashboard" (include "fraudpipe.fullname" .)) .Values.dashboard.existingSecret }}
{{- end }}

{{/* Maps merged as Helm merges values: `over`'s keys win, maps merge key by key, lists and
scalars are replaced (a stage's false or 0 or [] replaces the default too, unlike sprig's
merge). Call with (dict "base" MAP "over" MAP); returns JSON. */}}
{{- define "fraudpipe.merged" -}}
{{- $out := deepCopy .base }}
{{- range $key, $value := .over }}
{{- $base := get $out $key }}
{{- if and (kindIs "map" $value) (kindIs "map" $base) }}
{{- $_ := set $out $key (include "fraudpipe.merged" (dict "base" $base "over" $value) | fromJson) }}
{{- else }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* A stage's effective values: stageDefaults under stages.<stage>, and its device ("cpu" for
the stages that have none). Call with (dict "root" $ "stage" "infer"); returns JSON. */}}
{{- define "fraudpipe.stageValues" -}}
{{- $s := include "fraudpipe.merged" (dict "base" .root.Values.stageDefaults "over" (index .root.Values.stages .stage)) | fromJson }}
{{- $_ := set $s "device" (default "cpu" $s.device) }}
{{- toJson $s }}
{{- end }}

{{/* Names: <release>-operator unless the release is named otherwise than the chart. */}}
{{- define "substratus.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "substratus.operator" -}}
{{- printf "%s-operator" (include "substratus.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "substratus.serviceAccount" -}}
{{- default (include "substratus.operator" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "substratus.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "substratus.labels" -}}
{{ include "substratus.selector" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "substratus.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "substratus.uploadKeySecret" -}}
{{- default (printf "%s-upload-key" (include "substratus.operator" .)) .Values.uploads.keySecret -}}
{{- end -}}

{{/* The cloud identity's ServiceAccount annotations (identity in values.yaml). */}}
{{- define "substratus.identityAnnotations" -}}
{{- with .Values.identity.gcpServiceAccount }}
iam.gke.io/gcp-service-account: {{ . | quote }}
{{- end }}
{{- with .Values.identity.awsRoleArn }}
eks.amazonaws.com/role-arn: {{ . | quote }}
{{- end }}
{{- with .Values.identity.azureClientId }}
azure.workload.identity/client-id: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Azure Workload Identity injects its token into pods labelled so. */}}
{{- define "substratus.identityPodLabels" -}}
{{- if .Values.identity.azureClientId }}
azure.workload.identity/use: "true"
{{- end }}
{{- end -}}

{{/* The operator's config.yaml (config.py). */}}
{{- define "substratus.config" -}}
{{- $identity := include "substratus.identityAnnotations" . | fromYaml -}}
{{- $config := dict
  "artifact_url" .Values.artifactURL
  "helper_image" (include "substratus.image" .)
  "image_tag" (default .Chart.AppVersion .Values.workloadImages.tag)
  "images" .Values.workloadImages.overrides
  "image_pull_policy" .Values.workloadImages.pullPolicy
  "cloud" .Values.cloud
  "gpu_type_label" .Values.gpu.typeLabel
  "namespaces" .Values.namespaces
  "workers" .Values.operator.workers
  "log_format" .Values.operator.logFormat
  "metrics_listen" (printf "0.0.0.0:%d" (int .Values.metrics.port))
  "notebook_storage_class" .Values.notebooks.storageClass
  "notebook_home_size" .Values.notebooks.homeSize
  "registry" .Values.builds.registry
  "insecure_registries" .Values.builds.insecureRegistries
  "build_image" .Values.builds.image
  "build_namespace" .Values.builds.namespace
  "build_timeout_seconds" .Values.builds.timeoutSeconds
-}}
{{- if .Values.builds.registryAuthSecret }}
{{- $_ := set $config "registry_auth_file" "/etc/substratus-registry/config.json" }}
{{- end }}
{{- if .Values.uploads.endpoint }}
{{- $_ := set $config "upload_endpoint" .Values.uploads.endpoint }}
{{- $_ := set $config "upload_listen" (printf "0.0.0.0:%d" (int .Values.uploads.service.port)) }}
{{- end }}
{{- if $identity }}
{{- $_ := set $config "workload_service_account" .Values.identity.workloadServiceAccount }}
{{- $_ := set $config "workload_service_account_annotations" $identity }}
{{- $_ := set $config "workload_pod_labels" (include "substratus.identityPodLabels" . | fromYaml) }}
{{- end }}
{{- toYaml (mergeOverwrite $config .Values.operator.config) }}
{{- end -}}

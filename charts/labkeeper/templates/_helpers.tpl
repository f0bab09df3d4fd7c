{{/* Names and labels shared by every template. */}}

{{- define "labkeeper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "labkeeper.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- include "labkeeper.name" . -}}
{{- end -}}
{{- end -}}

{{- define "labkeeper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "labkeeper.labels" -}}
helm.sh/chart: {{ include "labkeeper.chart" . }}
app.kubernetes.io/name: {{ include "labkeeper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: labkeeper
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels for one component: include with (dict "ctx" . "component" "operator"). */}}
{{- define "labkeeper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "labkeeper.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "labkeeper.componentLabels" -}}
{{ include "labkeeper.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "labkeeper.operator.fullname" -}}
{{- printf "%s-operator" (include "labkeeper.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "labkeeper.agent.fullname" -}}
{{- printf "%s-agent" (include "labkeeper.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "labkeeper.operator.serviceAccountName" -}}
{{- default (include "labkeeper.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- end -}}

{{- define "labkeeper.agent.serviceAccountName" -}}
{{- default (include "labkeeper.agent.fullname" .) .Values.agent.serviceAccount.name -}}
{{- end -}}

{{/* The operator and agent read the policy under this fixed name. */}}
{{- define "labkeeper.policyConfigMap" -}}labkeeper-policy{{- end -}}

{{/* One image for operator and agent; a digest wins over a tag. */}}
{{- define "labkeeper.image" -}}
{{- $img := .Values.image -}}
{{- $registry := $img.registry | default "" -}}
{{- $repo := ternary $img.repository (printf "%s/%s" $registry $img.repository) (eq $registry "") -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "labkeeper.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The rendered policy document; the ConfigMap and the agent's config hash both use it. */}}
{{- define "labkeeper.policyYaml" -}}
{{ toYaml .Values.policy }}
{{- end -}}

{{/* The PriorityClass a tier's pods run under, as the operator names it. */}}
{{- define "labkeeper.tierPriorityClass" -}}labkeeper-{{ . }}{{- end -}}

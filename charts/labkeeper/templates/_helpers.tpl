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
{{- include "labkeeper.validatePolicy" . -}}
{{ toYaml .Values.policy }}
{{- end -}}

{{/* The LabPolicy model's checks across fields, which a JSON schema cannot express; the operator would
refuse such a policy, so `helm install` refuses it first, naming the field. */}}
{{- define "labkeeper.validatePolicy" -}}
{{- $p := .Values.policy -}}
{{- $tiers := $p.tiers | default dict -}}
{{- $hold := $p.holdPriority | default 100000 | int64 -}}
{{- range $name, $tier := $tiers -}}
{{- $priority := $tier.priority | default 10000 | int64 -}}
{{- if le $hold $priority -}}
{{- fail (printf "policy.holdPriority %d must be above policy.tiers.%s.priority %d, so a held GPU is never preempted" $hold $name $priority) -}}
{{- end -}}
{{- end -}}
{{- $default := $p.defaultTier | default "student" -}}
{{- if not (hasKey $tiers $default) -}}
{{- fail (printf "policy.defaultTier %q is not one of policy.tiers: %s" $default (keys $tiers | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $range := $p.uidRange | default dict -}}
{{- $start := $range.start | default 20000 | int64 -}}
{{- $end := $range.end | default 29999 | int64 -}}
{{- if lt $end $start -}}
{{- fail (printf "policy.uidRange.end %d is below policy.uidRange.start %d" $end $start) -}}
{{- end -}}
{{- $gid := $p.labUsersGid | default 2000 | int64 -}}
{{- if and (ge $gid $start) (le $gid $end) -}}
{{- fail (printf "policy.labUsersGid %d lies inside policy.uidRange %d-%d, where users' private groups are allocated; move one of them" $gid $start $end) -}}
{{- end -}}
{{- end -}}

{{/* The PriorityClass a tier's pods run under, as the operator names it. */}}
{{- define "labkeeper.tierPriorityClass" -}}labkeeper-{{ . }}{{- end -}}

{{/*
Helpers are namespaced "modelflock." so they cannot clash with a parent chart's.
*/}}

{{/* The chart name, overridable. */}}
{{- define "modelflock.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The full name prefix of every resource: the release name, plus the chart name unless the
release name already contains it. Kept to 52 characters so suffixed names fit in 63. */}}
{{- define "modelflock.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart label value: name-version */}}
{{- define "modelflock.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "modelflock.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelflock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Common labels of every object the chart renders. */}}
{{- define "modelflock.labels" -}}
helm.sh/chart: {{ include "modelflock.chart" . }}
app.kubernetes.io/name: {{ include "modelflock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelflock
{{- end -}}

{{/* The operator ServiceAccount's name. */}}
{{- define "modelflock.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modelflock.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image reference: by digest when image.digest is set, else by tag (default
the chart's appVersion). */}}
{{- define "modelflock.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* imagePullSecrets in the Kubernetes form; plain names are accepted too. */}}
{{- define "modelflock.imagePullSecrets" -}}
{{- range .Values.imagePullSecrets }}
{{- if kindIs "string" . }}
- name: {{ . }}
{{- else }}
- name: {{ .name }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Names of the objects other templates refer to. */}}
{{- define "modelflock.configName" -}}
{{- printf "%s-config" (include "modelflock.fullname" .) -}}
{{- end -}}
{{- define "modelflock.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "modelflock.fullname" .) -}}
{{- end -}}
{{- define "modelflock.webhookCertificateName" -}}
{{- printf "%s-webhook" (include "modelflock.fullname" .) -}}
{{- end -}}

{{/* Ports: part of the operator's command-line contract, so not configurable. */}}
{{- define "modelflock.port.metrics" -}}8080{{- end -}}
{{- define "modelflock.port.flockApi" -}}8090{{- end -}}
{{- define "modelflock.port.webhook" -}}9443{{- end -}}
{{- define "modelflock.port.liveness" -}}8081{{- end -}}

{{/* The flock API URL routers use: operatorUrl, or the operator Service in-cluster. */}}
{{- define "modelflock.operatorUrl" -}}
{{- if .Values.operatorUrl -}}
{{- .Values.operatorUrl -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%s" (include "modelflock.fullname" .) .Release.Namespace (include "modelflock.port.flockApi" .) -}}
{{- end -}}
{{- end -}}

{{/* The operator configuration file (operator_config.py's OperatorConfig), as YAML. */}}
{{- define "modelflock.operatorConfig" -}}
{{- $autoscaler := dict "intervalSeconds" .Values.autoscaler.intervalSeconds "scrapeTimeoutSeconds" .Values.autoscaler.scrapeTimeoutSeconds "metricSource" .Values.autoscaler.metricSource -}}
{{- if .Values.autoscaler.prometheusUrl -}}
{{- $_ := set $autoscaler "prometheusUrl" .Values.autoscaler.prometheusUrl -}}
{{- else if eq .Values.autoscaler.metricSource "prometheus" -}}
{{- fail "autoscaler.prometheusUrl is required when autoscaler.metricSource is prometheus" -}}
{{- end -}}
{{- $images := dict "vllm" .Values.images.vllm "tgi" .Values.images.tgi "router" (default (include "modelflock.image" .) .Values.images.router) -}}
{{- $election := dict "leaseName" (include "modelflock.leaseName" .) "leaseNamespace" .Release.Namespace "leaseDurationSeconds" .Values.leaderElection.leaseDurationSeconds "renewDeadlineSeconds" .Values.leaderElection.renewDeadlineSeconds "retryPeriodSeconds" .Values.leaderElection.retryPeriodSeconds -}}
{{- $config := dict "nodePools" .Values.nodePools "images" $images "autoscaler" $autoscaler "resyncSeconds" .Values.resyncSeconds "flockApiPort" (include "modelflock.port.flockApi" . | int) "metricsPort" (include "modelflock.port.metrics" . | int) "operatorUrl" (include "modelflock.operatorUrl" .) "leaderElection" $election -}}
{{- if .Values.watchNamespaces -}}
{{- $_ := set $config "watchNamespaces" .Values.watchNamespaces -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The Lease the replicas elect their leader with. One name for every clusterwide release in a
namespace: two of them would otherwise both write to the same objects. */}}
{{- define "modelflock.leaseName" -}}
{{- default "modelflock-operator" .Values.leaderElection.leaseName -}}
{{- end -}}

{{/* What the operator does with each kind, in every namespace it serves (a ClusterRole, or a
Role per watched namespace). Verbs are the ones the code uses, checked by running the
operator with them (tests/integration/test_operator_rbac.py). */}}
{{- define "modelflock.operatorRules" -}}
# The kinds it reconciles: watched; kopf patches its finalizer; reads by name.
- apiGroups: ["modelflock.io"]
  resources: ["modelexperts", "routingpolicies", "knowledgebases"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["modelflock.io"]
  resources: ["modelexperts/status", "routingpolicies/status", "knowledgebases/status"]
  verbs: ["patch"]
# The autoscaler sets replicas through the scale subresource.
- apiGroups: ["modelflock.io"]
  resources: ["modelexperts/scale"]
  verbs: ["patch"]
# Engine Deployments and router gateways: watched, read, server-side applied, gateways deleted.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Rendered router ConfigMaps (applied); classifier examples and KnowledgeBase sources (read by
# name); ConfigMaps labelled modelflock.io/examples are watched (RBAC cannot filter by label).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Who may reach a policy's gateway (rendered with it, deleted with it).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch", "delete"]
# Engine pods: readiness, scheduling failures, IPs to scrape.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Secrets, by name only: an external expert's API key exists, a policy's router token, a
# KnowledgeBase's store credentials and Secret-held documents; the router token Secret is
# applied. Never listed or watched: the operator cannot enumerate a namespace's Secrets.
# Token Secrets are garbage-collected with their policy.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

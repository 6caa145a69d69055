{{/* The chart name, or nameOverride. */}}
{{- define "lts.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name: fullnameOverride, the release name when it already
contains the chart name, else "<release>-<chart>". */}}
{{- define "lts.fullname" -}}
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

{{/* Name of the operator's objects. */}}
{{- define "lts.operatorName" -}}
{{- printf "%s-operator" (include "lts.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lts.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "lts.labels" -}}
helm.sh/chart: {{ include "lts.chart" . }}
app.kubernetes.io/name: {{ include "lts.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector of the operator pods. */}}
{{- define "lts.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "lts.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "lts.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lts.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "repository:tag", the tag defaulting to the chart's appVersion. Call with
(dict "image" .Values.images.tracker "root" .). */}}
{{- define "lts.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{- define "lts.leaseName" -}}
{{- default (include "lts.operatorName" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/* Fails early, with a message, on value combinations the schema cannot express. */}}
{{- define "lts.checkValues" -}}
{{- if and (eq .Values.pki.mode "cert-manager") (not .Values.pki.certManager.issuer) }}
{{- fail "pki.mode=cert-manager needs pki.certManager.issuer (ClusterIssuer/NAME or Issuer/NAME)" }}
{{- end }}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled=true: without a Lease every replica would reconcile" }}
{{- end }}
{{- if .Values.cluster.enabled }}
{{- $c := .Values.cluster }}
{{- if and $c.taskTracker.keda.enabled (not $c.taskTracker.keda.prometheusAddress) }}
{{- fail "cluster.taskTracker.keda.enabled needs cluster.taskTracker.keda.prometheusAddress (the Prometheus that scrapes the trackers)" }}
{{- end }}
{{- if and $c.taskTracker.keda.enabled $c.taskTracker.autoscaling }}
{{- fail "cluster.taskTracker: set autoscaling or keda.enabled, not both (both would size the same Deployment)" }}
{{- end }}
{{- if and (gt (int $c.jobTracker.replicas) 1) (or (not $c.zookeeper) (not $c.mongodb.uriSecret.name)) }}
{{- fail "cluster.jobTracker.replicas > 1 needs cluster.zookeeper (master election) and cluster.mongodb.uriSecret.name (a shared store); see the chart's README" }}
{{- end }}
{{- if and $c.taskTracker.enabled (eq $c.taskTracker.worker.mode "Sidecar") }}
{{- if not (or $c.taskTracker.worker.exec $c.taskTracker.worker.http) }}
{{- fail "cluster.taskTracker.worker.mode=Sidecar needs worker.exec or worker.http" }}
{{- end }}
{{- if and $c.taskTracker.worker.http (not $c.taskTracker.image) }}
{{- fail "cluster.taskTracker.image is required with worker.http (the container the sidecar calls)" }}
{{- end }}
{{- end }}
{{- if and $c.taskTracker.enabled (eq $c.taskTracker.worker.mode "Sdk") (not $c.taskTracker.image) }}
{{- fail "cluster.taskTracker.image is required with worker.mode=Sdk (an image that links lts-worker-sdk)" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Names. The fullname is cut to 52 characters: the longest suffix added to it ("-migrations",
"-postgresql") keeps every object name within Kubernetes' 63.
*/}}
{{- define "render-farm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "render-farm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "render-farm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass (dict "ctx" $ "component" "worker"). */}}
{{- define "render-farm.labels" -}}
helm.sh/chart: {{ include "render-farm.chart" .ctx }}
{{ include "render-farm.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: render-farm
{{- end }}

{{- define "render-farm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "render-farm.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "render-farm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "render-farm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "render-farm.workerImage" -}}
{{- printf "%s:%s" .Values.image.worker.repository (default .Chart.AppVersion .Values.image.worker.tag) }}
{{- end }}

{{- define "render-farm.farmImage" -}}
{{- printf "%s:%s" .Values.image.farm.repository (default .Chart.AppVersion .Values.image.farm.tag) }}
{{- end }}

{{/*
Passwords of the bundled services and the dashboard's key, made once per render and kept:
an install generates them, an upgrade reads them back from the Secret it made (lookup), so
a database initialised with one password is never handed another. The values are memoised
in .Values so that every template of one render sees the same ones.
*/}}
{{- define "render-farm.generated" -}}
{{- if not (hasKey .Values "_generated") }}
{{- $fullname := include "render-farm.fullname" . }}
{{- $generated := dict }}
{{- $specs := list
    (list "postgresPassword" (printf "%s-database" $fullname) "password" .Values.bundled.postgresql.password)
    (list "redisPassword" (printf "%s-broker" $fullname) "password" .Values.bundled.redis.password)
    (list "minioUser" (printf "%s-storage" $fullname) "access-key-id" .Values.bundled.minio.rootUser)
    (list "minioPassword" (printf "%s-storage" $fullname) "secret-access-key" .Values.bundled.minio.rootPassword)
    (list "secretKey" (printf "%s-dashboard" $fullname) "secret-key" .Values.dashboard.secretKey) }}
{{- range $specs }}
{{- $value := index . 3 }}
{{- if not $value }}
{{- $existing := lookup "v1" "Secret" $.Release.Namespace (index . 1) }}
{{- if and $existing $existing.data (hasKey $existing.data (index . 2)) }}
{{- $value = index $existing.data (index . 2) | b64dec }}
{{- else }}
{{- $value = randAlphaNum 32 }}
{{- end }}
{{- end }}
{{- $_ := set $generated (index . 0) $value }}
{{- end }}
{{- $_ := set .Values "_generated" $generated }}
{{- end }}
{{- end }}

{{- define "render-farm.secret" -}}
{{- include "render-farm.generated" .ctx }}
{{- index .ctx.Values._generated .name }}
{{- end }}

{{/* Where each secret lives: the user's existing Secret, or the one the chart makes. */}}
{{- define "render-farm.databaseSecret" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecret }}{{ else }}{{ include "render-farm.fullname" . }}-database{{ end }}
{{- end }}
{{- define "render-farm.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}url{{ end }}
{{- end }}
{{- define "render-farm.brokerSecret" -}}
{{- if .Values.broker.existingSecret }}{{ .Values.broker.existingSecret }}{{ else }}{{ include "render-farm.fullname" . }}-broker{{ end }}
{{- end }}
{{- define "render-farm.brokerSecretKey" -}}
{{- if .Values.broker.existingSecret }}{{ .Values.broker.existingSecretKey }}{{ else }}url{{ end }}
{{- end }}
{{- define "render-farm.brokerEventsKey" -}}
{{- if .Values.broker.existingSecret }}{{ .Values.broker.existingSecretEventsKey }}{{ else if .Values.broker.eventsUrl }}events-url{{ end }}
{{- end }}
{{- define "render-farm.storageSecret" -}}
{{- if .Values.storage.existingSecret }}{{ .Values.storage.existingSecret }}{{ else }}{{ include "render-farm.fullname" . }}-storage{{ end }}
{{- end }}
{{/* Keys for S3 come from a secret unless the pod's role grants access. */}}
{{- define "render-farm.storageHasKeys" -}}
{{- if or .Values.storage.existingSecret .Values.storage.accessKeyId .Values.bundled.minio.enabled }}true{{ end }}
{{- end }}
{{- define "render-farm.dashboardSecret" -}}
{{- if .Values.dashboard.existingSecret }}{{ .Values.dashboard.existingSecret }}{{ else }}{{ include "render-farm.fullname" . }}-dashboard{{ end }}
{{- end }}
{{- define "render-farm.dashboardSecretKey" -}}
{{- if .Values.dashboard.existingSecret }}{{ .Values.dashboard.existingSecretKey }}{{ else }}secret-key{{ end }}
{{- end }}

{{/* The URLs the chart writes into its own Secrets. */}}
{{- define "render-farm.databaseUrl" -}}
{{- if .Values.bundled.postgresql.enabled }}
{{- $pg := .Values.bundled.postgresql }}
{{- printf "postgresql://%s:%s@%s-postgresql:5432/%s" $pg.username (include "render-farm.secret" (dict "ctx" . "name" "postgresPassword")) (include "render-farm.fullname" .) $pg.database }}
{{- else }}
{{- required "database.url is required (or database.existingSecret, or bundled.postgresql.enabled)" .Values.database.url }}
{{- end }}
{{- end }}

{{- define "render-farm.brokerUrl" -}}
{{- if .Values.bundled.redis.enabled }}
{{- printf "redis://:%s@%s-redis:6379/0" (include "render-farm.secret" (dict "ctx" . "name" "redisPassword")) (include "render-farm.fullname" .) }}
{{- else }}
{{- required "broker.url is required (or broker.existingSecret, or bundled.redis.enabled)" .Values.broker.url }}
{{- end }}
{{- end }}

{{/* Redis for KEDA's optional list trigger: host:port, and the password apart. */}}
{{- define "render-farm.redisAddress" -}}
{{- if .Values.autoscaling.redis.address }}
{{- .Values.autoscaling.redis.address }}
{{- else if .Values.bundled.redis.enabled }}
{{- printf "%s-redis:6379" (include "render-farm.fullname" .) }}
{{- else if and .Values.broker.url (not .Values.broker.existingSecret) }}
{{- (urlParse .Values.broker.url).host }}
{{- else }}
{{- required "autoscaling.redis.address is required with broker.existingSecret" "" }}
{{- end }}
{{- end }}

{{- define "render-farm.redisPassword" -}}
{{- if .Values.bundled.redis.enabled }}
{{- include "render-farm.secret" (dict "ctx" . "name" "redisPassword") }}
{{- else if .Values.broker.url }}
{{- $userinfo := (urlParse .Values.broker.url).userinfo }}
{{- if contains ":" $userinfo }}{{ regexReplaceAll "^[^:]*:" $userinfo "" }}{{ end }}
{{- end }}
{{- end }}

{{- define "render-farm.s3EndpointUrl" -}}
{{- if .Values.bundled.minio.enabled }}
{{- printf "http://%s-minio:9000" (include "render-farm.fullname" .) }}
{{- else }}
{{- .Values.storage.s3EndpointUrl }}
{{- end }}
{{- end }}

{{/* The bucket named by storage.url (s3://bucket/prefix). */}}
{{- define "render-farm.bucket" -}}
{{- (urlParse .Values.storage.url).host }}
{{- end }}

{{/*
Environment of every container that runs farm code: the settings from the ConfigMap, the
secrets by reference (never copied into the ConfigMap), and a writable HOME on a read-only
root filesystem.
*/}}
{{- define "render-farm.env" -}}
- name: HOME
  value: /tmp
- name: FARM_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "render-farm.databaseSecret" . }}
      key: {{ include "render-farm.databaseSecretKey" . }}
- name: FARM_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "render-farm.brokerSecret" . }}
      key: {{ include "render-farm.brokerSecretKey" . }}
{{- with include "render-farm.brokerEventsKey" . }}
- name: FARM_EVENTS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "render-farm.brokerSecret" $ }}
      key: {{ . }}
{{- end }}
{{- if include "render-farm.storageHasKeys" . }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "render-farm.storageSecret" . }}
      key: {{ if .Values.storage.existingSecret }}{{ .Values.storage.existingSecretKeys.accessKeyId }}{{ else }}access-key-id{{ end }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "render-farm.storageSecret" . }}
      key: {{ if .Values.storage.existingSecret }}{{ .Values.storage.existingSecretKeys.secretAccessKey }}{{ else }}secret-access-key{{ end }}
{{- end }}
{{- end }}

{{- define "render-farm.envFrom" -}}
- configMapRef:
    name: {{ include "render-farm.fullname" . }}-settings
{{- end }}

{{/* Roll the pods when a setting or a chart-made secret changes. */}}
{{- define "render-farm.checksums" -}}
checksum/settings: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secrets: {{ include (print $.Template.BasePath "/secrets.yaml") . | sha256sum }}
{{- end }}

{{/* Init container: wait until the migrations Job has brought the schema to this code's head. */}}
{{- define "render-farm.waitForMigrations" -}}
- name: wait-for-migrations
  image: {{ .image }}
  imagePullPolicy: {{ .pullPolicy }}
  command:
    - /bin/sh
    - -c
    - until python -m workers.probe --migrated; do sleep 5; done
  env:
    {{- include "render-farm.env" .ctx | nindent 4 }}
  envFrom:
    {{- include "render-farm.envFrom" .ctx | nindent 4 }}
  securityContext:
    {{- toYaml .ctx.Values.securityContext | nindent 4 }}
  resources:
    requests:
      cpu: 50m
      memory: 256Mi
    limits:
      memory: 512Mi
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end }}

{{/*
Annotations for a Prometheus that finds its targets by them; pass (dict "ctx" $ "port" N).
*/}}
{{- define "render-farm.scrapeAnnotations" -}}
{{- if and .ctx.Values.metrics.enabled .ctx.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* Names and labels. */}}
{{- define "eventline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eventline.fullname" -}}
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

{{/* The name of one component's objects: <fullname>-<component>. */}}
{{- define "eventline.componentName" -}}
{{- printf "%s-%s" (include "eventline.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eventline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "eventline.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: eventline
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "eventline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eventline.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "eventline.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "eventline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "eventline.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The gRPC services: the module the image runs, and the Secrets each reads (see values.secrets).
*/}}
{{- define "eventline.grpcServices" -}}
ingestion:
  module: eventline_ingestion
  secrets: [databaseUrl, redisUrl]
segmentation:
  module: eventline_segmentation
  secrets: [databaseUrl, segmentationReadDatabaseUrl]
campaigns:
  module: eventline_campaigns
  secrets: [databaseUrl, redisUrl, serviceApiKey, providerSecret, smtpPassword, unsubscribeSecret]
{{- end }}

{{/* The Secrets the HTTP gateway reads: its key for its own calls, and the callback and unsubscribe keys. */}}
{{- define "eventline.gatewaySecrets" -}}
[serviceApiKey, unsubscribeSecret, callbackSecret, mailgunSigningKey, twilioAuthToken, sendgridVerificationKey, postmarkWebhookAuth]
{{- end }}

{{/* Each secret's variable; the optional ones may be missing from their Secret. */}}
{{- define "eventline.secretVariables" -}}
databaseUrl: {variable: EVENTLINE_DATABASE_URL, optional: false}
redisUrl: {variable: EVENTLINE_REDIS_URL, optional: false}
serviceApiKey: {variable: EVENTLINE_SERVICE_API_KEY, optional: true}
providerSecret: {variable: EVENTLINE_PROVIDER_SECRET, optional: true}
smtpPassword: {variable: EVENTLINE_SMTP_PASSWORD, optional: true}
segmentationReadDatabaseUrl: {variable: EVENTLINE_SEGMENTATION_READ_DATABASE_URL, optional: true}
unsubscribeSecret: {variable: EVENTLINE_UNSUBSCRIBE_SECRET, optional: true}
callbackSecret: {variable: EVENTLINE_CALLBACK_SECRET, optional: true}
mailgunSigningKey: {variable: EVENTLINE_MAILGUN_SIGNING_KEY, optional: true}
twilioAuthToken: {variable: EVENTLINE_TWILIO_AUTH_TOKEN, optional: true}
sendgridVerificationKey: {variable: EVENTLINE_SENDGRID_VERIFICATION_KEY, optional: true}
postmarkWebhookAuth: {variable: EVENTLINE_POSTMARK_WEBHOOK_AUTH, optional: true}
{{- end }}

{{/* env entries of secrets: (dict "root" $ "secrets" (list "databaseUrl" ...)). */}}
{{- define "eventline.secretEnv" -}}
{{- $variables := fromYaml (include "eventline.secretVariables" .root) }}
{{- range .secrets }}
{{- $ref := index $.root.Values.secrets . }}
{{- $variable := index $variables . }}
- name: {{ $variable.variable }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name | quote }}
      key: {{ $ref.key | quote }}
      {{- if $variable.optional }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}

{{/* env entries of a NAME: value map, sorted by name. */}}
{{- define "eventline.envMap" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* What every Eventline pod shares: (dict "root" $ "component" NAME). */}}
{{- define "eventline.podSpecCommon" -}}
serviceAccountName: {{ include "eventline.serviceAccountName" .root }}
automountServiceAccountToken: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ add .root.Values.shutdown.preStopSeconds .root.Values.shutdown.graceSeconds .root.Values.shutdown.closeSeconds }}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
{{- range list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
  - topologyKey: {{ . }}
    maxSkew: {{ $.root.Values.topologySpread.maxSkew }}
    whenUnsatisfiable: {{ $.root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "eventline.selectorLabels" $ | nindent 8 }}
    # Count only the pods of the same rollout, so a rolling update spreads too.
    matchLabelKeys: [pod-template-hash]
{{- end }}
{{- end }}
{{- with .root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  # The root filesystem is read-only: /tmp is the only place to write (render workers' files,
  # campaigns' file sink when no channel is configured).
  - name: tmp
    emptyDir: {sizeLimit: 256Mi}
{{- end }}

{{/* A container's securityContext, preStop and /tmp mount. */}}
{{- define "eventline.containerCommon" -}}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
lifecycle:
  preStop:
    exec:
      command: ["sleep", "{{ .Values.shutdown.preStopSeconds }}"]
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- end }}

{{/* The HorizontalPodAutoscaler and PodDisruptionBudget of a component:
(dict "root" $ "component" NAME "values" .Values.<component>). */}}
{{- define "eventline.scaling" -}}
{{- if .values.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "eventline.componentName" . }}
  labels:
    {{- include "eventline.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "eventline.componentName" . }}
  minReplicas: {{ .values.autoscaling.minReplicas }}
  maxReplicas: {{ .values.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .values.autoscaling.targetCPUUtilizationPercentage }}
{{- end }}
{{- if .values.podDisruptionBudget.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "eventline.componentName" . }}
  labels:
    {{- include "eventline.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "eventline.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

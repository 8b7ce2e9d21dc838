{{/* The release's prefix for every object: <release>-<part>. */}}
{{- define "callchain.name" -}}
{{- printf "%s-%s" .root.Release.Name .part | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "callchain.selector" -}}
app.kubernetes.io/name: callchain
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .part }}
{{- end -}}

{{- define "callchain.labels" -}}
{{ include "callchain.selector" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "callchain.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret with JWT_SECRET and ADMIN_PASSWORD. */}}
{{- define "callchain.secretName" -}}
{{- default (printf "%s-secrets" .Release.Name) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The seconds a pod gets to stop: the pause before SIGTERM, the services'
     own bound, and 5 s for the exit itself. */}}
{{- define "callchain.gracePeriod" -}}
{{- add .Values.preStopSeconds .Values.shutdownTimeoutSeconds 5 -}}
{{- end -}}

{{/* What every service's container shares: the pod's identity from the
     downward API (as the OTel resource, so a span names the pod that served
     it), the collector to export to, the log level, the shutdown bound. */}}
{{- define "callchain.commonEnv" -}}
- name: K8S_POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: K8S_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: K8S_NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: k8s.pod.name=$(K8S_POD_NAME),k8s.namespace.name=$(K8S_NAMESPACE),k8s.node.name=$(K8S_NODE_NAME)
- name: OTEL_SERVICE_NAME
  value: {{ .part }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ printf "http://%s:4317" (include "callchain.name" (dict "root" .root "part" "collector")) }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .root.Values.otel.tracesSampler | quote }}
- name: RUST_LOG
  value: {{ .root.Values.otel.logLevel | quote }}
- name: SHUTDOWN_TIMEOUT_SECONDS
  value: {{ .root.Values.shutdownTimeoutSeconds | quote }}
{{- end -}}

{{- define "callchain.databaseUrl" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.secretName }}
      key: {{ .Values.database.secretKey }}
{{- end -}}

{{/* The pod spec's parts every service shares. */}}
{{- define "callchain.podCommon" -}}
terminationGracePeriodSeconds: {{ include "callchain.gracePeriod" .root }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
automountServiceAccountToken: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The container's parts every service shares. */}}
{{- define "callchain.containerCommon" -}}
image: {{ include "callchain.image" .root }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
command: [{{ printf "/usr/local/bin/%s" .part | quote }}]
securityContext:
  {{- toYaml .root.Values.securityContext | nindent 2 }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ .root.Values.preStopSeconds }}
{{- end -}}

{{- define "callchain.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "callchain.name" . }}
  labels:
    {{- include "callchain.labels" . | nindent 4 }}
spec:
  minAvailable: {{ .values.podDisruptionBudget.minAvailable }}
  selector:
    matchLabels:
      {{- include "callchain.selector" . | nindent 6 }}
{{- end -}}

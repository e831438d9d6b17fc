{{/* The labels every object carries. */}}
{{- define "audiofan.labels" -}}
app.kubernetes.io/name: audiofan
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* What selects a component's pods: fixed for the Deployment's life. */}}
{{- define "audiofan.selector" -}}
app.kubernetes.io/name: audiofan
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "audiofan.name" -}}
{{ printf "%s-%s" .root.Release.Name .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "audiofan.image" -}}
{{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The restricted Pod Security profile: the pod's part. The image runs as 65532 (distroless nonroot). */}}
{{- define "audiofan.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile: {type: RuntimeDefault}
{{- end }}

{{/* The restricted Pod Security profile: each container's part, with a read-only root. */}}
{{- define "audiofan.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end }}

{{/* Spread over nodes (a node lost takes one replica) and, best effort, zones. */}}
{{- define "audiofan.spread" -}}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: DoNotSchedule
    labelSelector:
      matchLabels:
        {{- include "audiofan.selector" . | nindent 8 }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "audiofan.selector" . | nindent 8 }}
{{- end }}
{{- end }}

{{/* The settings every part reads: NATS, logs, the listener, the bus's layout. */}}
{{- define "audiofan.env" -}}
- {name: NATS_URL, value: {{ .root.Values.nats.url | quote }}}
- {name: NATS_USER, value: {{ .user }}}
- {name: NATS_PASSWORD, valueFrom: {secretKeyRef: {name: {{ .root.Values.nats.passwordsSecret }}, key: {{ .key }}}}}
- {name: AUDIOFAN_HTTP_ADDR, value: ":8080"}
- {name: AUDIOFAN_LOG_FORMAT, value: json}
{{- range $k, $v := .env }}
- {name: {{ $k }}, value: {{ $v | quote }}}
{{- end }}
{{- end }}

{{- define "audiofan.probes" -}}
readinessProbe: {httpGet: {path: /readyz, port: http}, periodSeconds: 5}
livenessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 10, failureThreshold: 6}
{{- end }}

{{- define "audiofan.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "audiofan.name" . }}
  labels:
    {{- include "audiofan.labels" . | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "audiofan.selector" . | nindent 6 }}
{{- end }}

{{- /* The recorder's blob store URL (azblob://, s3://), or nothing when it stores on disk or in the Object Store. */}}
{{- define "audiofan.blobStore" -}}
{{- if regexMatch "^(azblob|s3)://" .Values.recorder.store }}{{ .Values.recorder.store }}{{ end }}
{{- end }}

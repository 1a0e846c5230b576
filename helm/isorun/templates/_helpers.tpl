{{/* Names and labels. */}}
{{- define "isorun.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "isorun.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "isorun.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "isorun.componentLabels" -}}
{{ include "isorun.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "isorun.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "isorun.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image reference: (dict "root" $ "name" "gateway"). */}}
{{- define "isorun.image" -}}
{{- $i := .root.Values.image -}}
{{- $ref := printf "%s%s:%s" $i.prefix .name (default .root.Chart.AppVersion $i.tag) -}}
{{- if $i.registry -}}{{ printf "%s/%s" (trimSuffix "/" $i.registry) $ref }}{{- else -}}{{ $ref }}{{- end -}}
{{- end -}}

{{/* A service's in-cluster DNS name: (dict "root" $ "component" "quota"). */}}
{{- define "isorun.host" -}}
{{- printf "%s-%s.%s.svc" (include "isorun.fullname" .root) .component .root.Release.Namespace -}}
{{- end -}}

{{/*
A flag value as an environment string. Helm reads numbers of values files as float64, which
would print 21474836480 as 2.147483648e+10: whole numbers print as integers.
*/}}
{{- define "isorun.flagValue" -}}
{{- if kindIs "float64" . -}}
{{- if eq . (floor .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/* env entries of a flags map: ISORUN_<FLAG>. */}}
{{- define "isorun.flagEnv" -}}
{{- range $name, $value := . }}
- name: {{ printf "ISORUN_%s" (upper $name) }}
  value: {{ include "isorun.flagValue" $value | quote }}
{{- end }}
{{- end -}}

{{- define "isorun.databaseEnv" -}}
- name: ISORUN_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.key }}
{{- end -}}

{{/* The restricted pod security profile, for every pod but the runner. */}}
{{- define "isorun.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "isorun.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "isorun.antiAffinity" -}}
{{- $sel := include "isorun.selector" (dict "root" .root "component" .component) | fromYaml -}}
podAntiAffinity:
{{- if eq .root.Values.podDefaults.antiAffinity "hard" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels: {{- toYaml $sel | nindent 10 }}
{{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels: {{- toYaml $sel | nindent 12 }}
{{- end }}
{{- end -}}

{{/* The TLS secret of an identity. */}}
{{- define "isorun.tlsSecret" -}}
{{- $t := .root.Values.tls -}}
{{- if $t.certManager.enabled -}}
{{- printf "%s-%s-tls" (include "isorun.fullname" .root) .identity -}}
{{- else -}}
{{- required (printf "tls.internal.secrets.%s is required when tls.internal.enabled and cert-manager is off" .identity) (get $t.internal.secrets .identity) -}}
{{- end -}}
{{- end -}}

{{- define "isorun.tlsEnv" -}}
{{- if .root.Values.tls.internal.enabled }}
- name: ISORUN_TLS_CERT_FILE
  value: /etc/isorun/tls/tls.crt
- name: ISORUN_TLS_KEY_FILE
  value: /etc/isorun/tls/tls.key
- name: ISORUN_TLS_CA_FILE
  value: /etc/isorun/tls/ca.crt
- name: ISORUN_HEALTH_ADDR
  value: "0.0.0.0:{{ .root.Values.tls.internal.healthPort }}"
{{- end }}
{{- end -}}

{{- define "isorun.tlsVolumeMount" -}}
{{- if .root.Values.tls.internal.enabled }}
- name: tls
  mountPath: /etc/isorun/tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "isorun.tlsVolume" -}}
{{- if .root.Values.tls.internal.enabled }}
- name: tls
  secret:
    secretName: {{ include "isorun.tlsSecret" . }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "isorun.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The port of native gRPC probes: the plain-text health listener when TLS is on (kubelets
present no client certificate), else the gRPC port. (dict "root" $ "port" N) */}}
{{- define "isorun.probePort" -}}
{{- if .root.Values.tls.internal.enabled -}}{{ .root.Values.tls.internal.healthPort }}{{- else -}}{{ .port }}{{- end -}}
{{- end -}}

{{/*
The domain of public URLs: publicUrls.domain, else the wildcard Ingress host without "*.".
*/}}
{{- define "isorun.publicDomain" -}}
{{- default (trimPrefix "*." .Values.ingress.public.host) .Values.publicUrls.domain -}}
{{- end -}}

{{/*
The tunnel token's secretKeyRef (name and key), for the gateways and the runners.
*/}}
{{- define "isorun.tunnelTokenRef" -}}
name: {{ default (printf "%s-tunnel" (include "isorun.fullname" .)) .Values.publicUrls.tunnelToken.existingSecret }}
key: {{ .Values.publicUrls.tunnelToken.key }}
{{- end -}}

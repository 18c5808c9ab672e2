{{/* The release's name, the prefix of every object. */}}
{{- define "beamflow.fullname" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "beamflow.labels" -}}
app.kubernetes.io/name: beamflow
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.beamline }}
beamflow.io/beamline: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "beamflow.selector" -}}
app.kubernetes.io/name: beamflow
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "beamflow.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "beamflow.controllerEndpoint" -}}
tcp://{{ include "beamflow.fullname" . }}-controller:5555
{{- end -}}

{{/*
The pipeline file, as JSON: Helm reads every number of the values as a float, which TOML would
write as 2000.0 where the pipeline wants an integer; JSON writes it as 2000. The cluster's own
addresses are set here; the rest is the values' `pipeline`, unchanged.
*/}}
{{- define "beamflow.pipeline" -}}
{{- $p := deepCopy (.Values.pipeline | default .Values.demoPipeline) -}}
{{- $controller := default dict $p.controller -}}
{{- $_ := set $controller "control" "tcp://0.0.0.0:5555" -}}
{{- $_ := set $controller "http" "0.0.0.0:5000" -}}
{{- $_ := set $p "controller" $controller -}}
{{- $reducer := default dict $p.reducer -}}
{{- $_ := set $reducer "http" "0.0.0.0:5001" -}}
{{- $_ := set $p "reducer" $reducer -}}
{{- $security := default dict $p.security -}}
{{- if not (hasKey $security "roots") -}}
{{- $_ := set $security "roots" (ternary (list "/dumps" "/tmp") (list "/tmp") .Values.dumps.enabled) -}}
{{- end -}}
{{- $_ := set $p "security" $security -}}
{{- if include "beamflow.simIoc" . -}}
{{- range $name, $ingester := $p.ingesters -}}
{{- if and (eq $ingester.kind "epics_ca") (not (hasKey $ingester "addr_list")) -}}
{{- $_ := set $ingester "addr_list" (printf "%s-sim-ioc:5064" (include "beamflow.fullname" $)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toPrettyJson $p -}}
{{- end -}}

{{/* The Secret holding the HTTP token (key `token`): the one the values name, or the chart's. */}}
{{- define "beamflow.tokenSecret" -}}
{{- .Values.security.token.secretName | default (printf "%s-token" (include "beamflow.fullname" .)) -}}
{{- end -}}

{{/* The pod security context every pod runs with: non-root, read-only root filesystem. */}}
{{- define "beamflow.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "beamflow.containerSecurity" -}}
securityContext:
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities:
    drop: ["ALL"]
{{- end -}}

{{/* Environment every component gets. */}}
{{- define "beamflow.env" -}}
- name: BEAMFLOW_PIPELINE
  value: /etc/beamflow/pipeline.json
- name: BEAMFLOW_TOKEN_FILE
  value: /etc/beamflow/token
{{- if .Values.security.keys.secretName }}
- name: BEAMFLOW_KEYS
  value: /etc/beamflow/keys
- name: BEAMFLOW_DATA_PLANE
  value: {{ .Values.security.keys.dataPlane | default "encrypted" | quote }}
{{- end }}
- name: BEAMFLOW_HOST
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: BEAMFLOW_HEALTH
  value: "0.0.0.0:8080"
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{- define "beamflow.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: health
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: {{ .path | default "/readyz" }}
    port: {{ .port | default "health" }}
  periodSeconds: 5
{{- end -}}

{{- define "beamflow.volumeMounts" -}}
- name: pipeline
  mountPath: /etc/beamflow
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/*
/etc/beamflow: the pipeline, the HTTP token (file `token`) and, when named, the CURVE keys
(`keys/beamflow.key`, `keys/beamflow.pub`), as one projected volume: a Secret mounted inside a
ConfigMap's read-only mount would need a mount point the ConfigMap cannot hold.
*/}}
{{- define "beamflow.volumes" -}}
- name: pipeline
  projected:
    defaultMode: 0440
    sources:
      - configMap:
          name: {{ include "beamflow.fullname" . }}-pipeline
      - secret:
          name: {{ include "beamflow.tokenSecret" . }}
          items:
            - {key: token, path: token}
      {{- with .Values.security.keys.secretName }}
      - secret:
          name: {{ . }}
          items:
            - {key: beamflow.key, path: keys/beamflow.key}
            - {key: beamflow.pub, path: keys/beamflow.pub}
      {{- end }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{/* "true" when the simulated IOC runs: asked for, or the demo pipeline. */}}
{{- define "beamflow.simIoc" -}}
{{- if or .Values.simIoc.enabled (empty .Values.pipeline) -}}true{{- end -}}
{{- end -}}

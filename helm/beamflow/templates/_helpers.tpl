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

{{/*
Worker pools and the reducer may run a site's science image: its Python environment with the
beamflow wheel installed, for `kind = "python"` payloads (README, "Python payloads: a science
image"). Each helper below takes (dict "root" $ "spec" <the pool's or reducer's values> "what"
<their values path, for messages>) and renders exactly what the stock image always had when
`spec.image` is empty.
*/}}

{{/*
Where a science image's pod writes: the emptyDir the stock image mounts at /tmp, mounted here
instead (TMPDIR and HOME point at it), since a dranspose payload image keeps its payload in /tmp
(`WORKDIR /tmp`, `COPY src /tmp/src`) and an emptyDir over /tmp would hide it.
*/}}
{{- define "beamflow.scienceTmp" -}}
/var/tmp/beamflow
{{- end -}}

{{/* The container's image, pull policy, command and working directory. */}}
{{- define "beamflow.payloadImage" -}}
{{- $image := default dict .spec.image -}}
{{- if $image -}}
{{- $repository := required (printf "%s.image.repository: the science image (or no %s.image for the chart's)" .what .what) $image.repository -}}
image: {{ $repository }}{{ with $image.tag }}:{{ . }}{{ end }}
imagePullPolicy: {{ $image.pullPolicy | default .root.Values.image.pullPolicy }}
{{- /* The stock image's entrypoint is /usr/local/bin/beamflow; a science image's is its own
(dranspose's images: `CMD ["dranspose"]`): the wheel's console script, found on its PATH. */}}
command: {{ toJson (.spec.command | default (list "beamflow")) }}
{{- else -}}
image: {{ include "beamflow.image" .root }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
{{- with .spec.command }}
command: {{ toJson . }}
{{- end }}
{{- end }}
{{- with .spec.workingDir }}
workingDir: {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
The environment beyond "beamflow.env": for a science image TMPDIR and HOME in its writable
folder (Python libraries cache under HOME; uid 10001 has none in a site's image) unless `env`
sets them, then `env` itself.
*/}}
{{- define "beamflow.payloadEnv" -}}
{{- $named := list -}}
{{- range .spec.env -}}
{{- $named = append $named .name -}}
{{- end -}}
{{- if .spec.image -}}
{{- $tmp := include "beamflow.scienceTmp" . -}}
{{- range $name := list "TMPDIR" "HOME" -}}
{{- if not (has $name $named) }}
- name: {{ $name }}
  value: {{ $tmp }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with .spec.env }}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* The container's mounts: the stock ones (the scratch folder moved for a science image), then `volumeMounts`. */}}
{{- define "beamflow.payloadMounts" -}}
{{- if .spec.image -}}
- name: pipeline
  mountPath: /etc/beamflow
  readOnly: true
- name: tmp
  mountPath: {{ include "beamflow.scienceTmp" . }}
{{- else -}}
{{ include "beamflow.volumeMounts" .root }}
{{- end -}}
{{- with .spec.volumeMounts }}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* The pod's volumes: the stock ones, then `volumes` (what `volumeMounts` mounts). */}}
{{- define "beamflow.payloadVolumes" -}}
{{ include "beamflow.volumes" .root }}
{{- with .spec.volumes }}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* Names */}}
{{- define "weft.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "weft.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of a component's objects: weft.componentName (dict "ctx" $ "component" "worker") */}}
{{- define "weft.componentName" -}}
{{- printf "%s-%s" (include "weft.fullname" .ctx | trunc 50 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "weft.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object */}}
{{- define "weft.labels" -}}
helm.sh/chart: {{ include "weft.chart" . }}
{{ include "weft.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: weft
{{- end -}}

{{- define "weft.selectorLabels" -}}
app.kubernetes.io/name: {{ include "weft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of a component: weft.componentLabels (dict "ctx" $ "component" "worker") */}}
{{- define "weft.componentLabels" -}}
{{ include "weft.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "weft.componentSelectorLabels" -}}
{{ include "weft.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "weft.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "weft.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "weft.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret holding the cluster secret: the operator's, or the one the chart makes. */}}
{{- define "weft.clusterSecretName" -}}
{{- .Values.security.clusterSecret.existingSecret | default (include "weft.componentName" (dict "ctx" . "component" "cluster-secret")) -}}
{{- end -}}

{{/* Whether the coordinator authenticates clients. */}}
{{- define "weft.clientAuth" -}}
{{- if or .Values.security.auth.passwordFile.existingSecret .Values.security.auth.jwt.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* Guards: values that cannot work fail the render with a message naming the fix. */}}
{{- define "weft.validate" -}}
{{- $ext := .Values.etcd.external -}}
{{- $bundled := .Values.etcd.bundled -}}
{{- if and (not $ext.endpoints) (not $bundled.enabled) -}}
{{- fail "Weft needs etcd: set etcd.external.endpoints to your etcd client URLs (e.g. --set-json 'etcd.external.endpoints=[\"http://etcd:2379\"]'), or set etcd.bundled.enabled=true to run one with the chart" -}}
{{- end -}}
{{- if and $ext.endpoints $bundled.enabled -}}
{{- fail "etcd.external.endpoints and etcd.bundled.enabled=true are both set: use one etcd, either empty etcd.external.endpoints or set etcd.bundled.enabled=false" -}}
{{- end -}}
{{- if and $bundled.enabled (not (has (int $bundled.replicas) (list 1 3))) -}}
{{- fail (printf "etcd.bundled.replicas is %v: the bundled etcd runs 1 or 3 members (an even count adds no fault tolerance); set etcd.bundled.replicas to 1 or 3" $bundled.replicas) -}}
{{- end -}}
{{- if and $ext.tls.enabled (not $ext.tls.existingSecret) -}}
{{- fail "etcd.external.tls.enabled=true needs etcd.external.tls.existingSecret: the name of a Secret with keys ca.crt, tls.crt and tls.key" -}}
{{- end -}}
{{- if and $ext.auth.username (not $ext.auth.existingSecret) -}}
{{- fail "etcd.external.auth.username is set but etcd.external.auth.existingSecret is empty: name the Secret holding the etcd password (key etcd.external.auth.passwordKey)" -}}
{{- end -}}
{{- if and $bundled.enabled (or $ext.tls.enabled $ext.auth.username) -}}
{{- fail "etcd.external.tls and etcd.external.auth apply to an external etcd only; the bundled etcd (etcd.bundled.enabled=true) runs without TLS and authentication" -}}
{{- end -}}
{{- if and .Values.worker.autoscaling.enabled .Values.worker.keda.enabled -}}
{{- fail "worker.autoscaling.enabled and worker.keda.enabled are both true: pick one (the HPA scales on CPU/memory, KEDA on Weft's queue and slot metrics); both would fight over worker replicas" -}}
{{- end -}}
{{- if and .Values.worker.keda.enabled (not .Values.worker.keda.serverAddress) -}}
{{- fail "worker.keda.enabled=true needs worker.keda.serverAddress: the URL of the Prometheus that scrapes Weft (e.g. http://prometheus-operated.monitoring:9090)" -}}
{{- end -}}
{{- if and .Values.worker.autoscaling.enabled (not (dig "requests" "cpu" "" .Values.worker.resources)) -}}
{{- fail "worker.autoscaling.enabled=true needs worker.resources.requests.cpu: the HPA's CPU utilization is a percentage of that request" -}}
{{- end -}}
{{- if and .Values.worker.autoscaling.enabled .Values.worker.autoscaling.targetMemoryUtilizationPercentage (not (dig "requests" "memory" "" .Values.worker.resources)) -}}
{{- fail "worker.autoscaling.targetMemoryUtilizationPercentage needs worker.resources.requests.memory" -}}
{{- end -}}
{{- if and .Values.defaultCatalog (not (hasKey .Values.catalogs .Values.defaultCatalog)) -}}
{{- fail (printf "defaultCatalog is %q but catalogs has no such key; add catalogs.%s or change defaultCatalog" .Values.defaultCatalog .Values.defaultCatalog) -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled -}}
{{- fail "metrics.serviceMonitor.enabled and metrics.podMonitor.enabled are both true: every pod would be scraped twice; enable one" -}}
{{- end -}}
{{- $_ := include "weft.terminationGracePeriodSeconds" (dict "name" "coordinator" "values" .Values.coordinator) -}}
{{- $_ = include "weft.terminationGracePeriodSeconds" (dict "name" "worker" "values" .Values.worker) -}}
{{- if and (not (include "weft.clientAuth" .)) (not .Values.security.insecure) -}}
{{- fail "the coordinator serves Flight SQL to the network and would let anyone who reaches it run queries: set security.auth.passwordFile.existingSecret (a Secret with a password file made by `weft passwd`) or security.auth.jwt.existingSecret (a JWT key or JWKS), or security.insecure=true if the network itself is trusted" -}}
{{- end -}}
{{- if and (include "weft.clientAuth" .) .Values.security.insecure -}}
{{- fail "security.insecure=true is set together with client authentication (security.auth): drop security.insecure" -}}
{{- end -}}
{{- if and .Values.security.accessRules.rules .Values.security.accessRules.existingConfigMap -}}
{{- fail "security.accessRules.rules and security.accessRules.existingConfigMap are both set: give the rules inline or name your ConfigMap, not both" -}}
{{- end -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds of a component: drain + preStop sleep + 15 s unless set; a set
value must leave the drain its whole timeout after the preStop sleep.
*/}}
{{- define "weft.terminationGracePeriodSeconds" -}}
{{- $v := .values -}}
{{- $drain := int $v.drainTimeoutSeconds -}}
{{- $sleep := int $v.preStopSleepSeconds -}}
{{- if kindIs "invalid" $v.terminationGracePeriodSeconds -}}
{{- add $drain $sleep 15 -}}
{{- else -}}
{{- $grace := int $v.terminationGracePeriodSeconds -}}
{{- if le $grace (add $drain $sleep) -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must be greater than %s.drainTimeoutSeconds (%d) + %s.preStopSleepSeconds (%d) = %d, or Kubernetes kills the %s before its drain ends; raise it, lower the drain timeout, or leave it null to compute drain + preStop + 15" .name $grace .name $drain .name $sleep (add $drain $sleep) .name) -}}
{{- end -}}
{{- $grace -}}
{{- end -}}
{{- end -}}

{{/* etcd client URLs, comma-separated */}}
{{- define "weft.etcdEndpoints" -}}
{{- if .Values.etcd.bundled.enabled -}}
{{- $name := include "weft.componentName" (dict "ctx" . "component" "etcd") -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.bundled.replicas) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s-headless.%s.svc:2379" $name $i $name $.Release.Namespace) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- end -}}
{{- end -}}

{{/* Flags both binaries take: etcd, catalogs, OTLP, drain. Args: dict "ctx" $ "values" component-values */}}
{{- define "weft.commonArgs" -}}
{{- $ctx := .ctx -}}
{{- $ext := $ctx.Values.etcd.external }}
- --etcd={{ include "weft.etcdEndpoints" $ctx }}
{{- if not (kindIs "invalid" $ctx.Values.etcd.prefix) }}
- --etcd-prefix={{ $ctx.Values.etcd.prefix }}
{{- end }}
{{- if and (not $ctx.Values.etcd.bundled.enabled) $ext.tls.enabled }}
- --etcd-ca-file=/etc/weft/etcd-tls/ca.crt
- --etcd-cert-file=/etc/weft/etcd-tls/tls.crt
- --etcd-key-file=/etc/weft/etcd-tls/tls.key
{{- end }}
{{- if and (not $ctx.Values.etcd.bundled.enabled) $ext.auth.username }}
- --etcd-user={{ $ext.auth.username }}
{{- end }}
- --catalogs=/etc/weft/catalogs.toml
- --cluster-secret-file=/etc/weft/cluster-secret/{{ $ctx.Values.security.clusterSecret.key }}
{{- with $ctx.Values.otlp.endpoint }}
- --otlp-endpoint={{ . }}
{{- end }}
- --drain-timeout={{ int .values.drainTimeoutSeconds }}
{{- end -}}

{{/* env of both components. Args: dict "ctx" $ "values" component-values */}}
{{- define "weft.env" -}}
{{- $ctx := .ctx -}}
{{- $auth := $ctx.Values.etcd.external.auth }}
- name: TMPDIR
  value: /tmp
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- if and (not $ctx.Values.etcd.bundled.enabled) $auth.username }}
- name: WEFT_ETCD_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $auth.existingSecret }}
      key: {{ $auth.passwordKey }}
{{- end }}
{{- with $ctx.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with .values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "weft.envFrom" -}}
{{- $ctx := .ctx -}}
{{- with $ctx.Values.existingSecret }}
- secretRef:
    name: {{ . }}
{{- end }}
{{- with $ctx.Values.envFrom }}
{{ toYaml . }}
{{- end }}
{{- with .values.envFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* volumeMounts of both components */}}
{{- define "weft.volumeMounts" -}}
{{- $ctx := .ctx }}
- name: tmp
  mountPath: /tmp
- name: catalogs
  mountPath: /etc/weft/catalogs.toml
  subPath: catalogs.toml
  readOnly: true
{{- if and (not $ctx.Values.etcd.bundled.enabled) $ctx.Values.etcd.external.tls.enabled }}
- name: etcd-tls
  mountPath: /etc/weft/etcd-tls
  readOnly: true
{{- end }}
- name: cluster-secret
  mountPath: /etc/weft/cluster-secret
  readOnly: true
{{- with .values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "weft.volumes" -}}
{{- $ctx := .ctx }}
- name: tmp
  emptyDir:
    {{- with .values.tmpSizeLimit }}
    sizeLimit: {{ . }}
    {{- else }} {}
    {{- end }}
- name: catalogs
  configMap:
    name: {{ include "weft.componentName" (dict "ctx" $ctx "component" "catalogs") }}
{{- if and (not $ctx.Values.etcd.bundled.enabled) $ctx.Values.etcd.external.tls.enabled }}
- name: etcd-tls
  secret:
    secretName: {{ $ctx.Values.etcd.external.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
- name: cluster-secret
  secret:
    secretName: {{ include "weft.clusterSecretName" $ctx }}
    defaultMode: 0440
{{- with .values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Probes on the http port. Args: dict "values" component-values */}}
{{- define "weft.probes" -}}
{{- $p := .values.probes }}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ int $p.startup.periodSeconds }}
  failureThreshold: {{ int $p.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ int $p.liveness.periodSeconds }}
  timeoutSeconds: {{ int $p.liveness.timeoutSeconds }}
  failureThreshold: {{ int $p.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: {{ int $p.readiness.periodSeconds }}
  timeoutSeconds: {{ int $p.readiness.timeoutSeconds }}
  failureThreshold: {{ int $p.readiness.failureThreshold }}
{{- end -}}

{{- define "weft.lifecycle" -}}
{{- if gt (int .values.preStopSleepSeconds) 0 }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ int .values.preStopSleepSeconds }}
{{- end }}
{{- end -}}

{{/* Pod-level scheduling and identity settings shared by both Deployments */}}
{{- define "weft.podSpecCommon" -}}
{{- $ctx := .ctx -}}
serviceAccountName: {{ include "weft.serviceAccountName" $ctx }}
automountServiceAccountToken: {{ $ctx.Values.serviceAccount.automountServiceAccountToken }}
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $ctx.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ include "weft.terminationGracePeriodSeconds" (dict "name" .component "values" .values) }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The catalog file as TOML. Helm hands numbers from values to templates as float64, and toToml
would write `pool_size = 4.0`, which Weft rejects for integer settings; this writer prints whole
numbers as integers. Tables: dict "path" "a.b" "table" map.
*/}}
{{- define "weft.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "weft.toml.value" -}}
{{- $k := kindOf . -}}
{{- if eq $k "string" -}}{{ toJson . }}
{{- else if eq $k "bool" -}}{{ . }}
{{- else if or (eq $k "float64") (eq $k "float32") -}}
{{- if eq (float64 (int64 .)) (float64 .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if has $k (list "int" "int8" "int16" "int32" "int64" "uint" "uint8" "uint16" "uint32" "uint64") -}}{{ . }}
{{- else if eq $k "slice" -}}[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "weft.toml.value" $e }}{{ end }}]
{{- else if eq $k "map" -}}
{{- $m := . -}}
{ {{- range $i, $key := keys $m | sortAlpha }}{{ if $i }}, {{ end }}{{ include "weft.toml.key" $key }} = {{ include "weft.toml.value" (get $m $key) }}{{ end -}} }
{{- else -}}
{{- fail (printf "catalogs: cannot write %v (a %s) to the TOML catalog file" . $k) -}}
{{- end -}}
{{- end -}}

{{- define "weft.toml.table" -}}
{{- $path := .path -}}
{{- $t := .table -}}
{{- range $key := keys $t | sortAlpha }}
{{- $v := get $t $key }}
{{- if and (ne (kindOf $v) "map") (ne (kindOf $v) "invalid") }}
{{ include "weft.toml.key" $key }} = {{ include "weft.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $key := keys $t | sortAlpha }}
{{- $v := get $t $key }}
{{- if eq (kindOf $v) "map" }}
{{- $p := include "weft.toml.key" $key }}
{{- if $path }}{{ $p = printf "%s.%s" $path $p }}{{ end }}
{{- $hasScalar := or (not $v) false }}
{{- range $vv := values $v }}{{ if ne (kindOf $vv) "map" }}{{ $hasScalar = true }}{{ end }}{{ end }}
{{- if $hasScalar }}

[{{ $p }}]
{{- end }}
{{- include "weft.toml.table" (dict "path" $p "table" $v) }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "weft.catalogsToml" -}}
# Rendered by the Weft Helm chart from the values `catalogs` and `defaultCatalog`.
{{- $top := dict "catalogs" .Values.catalogs -}}
{{- with .Values.defaultCatalog }}{{ $_ := set $top "default_catalog" . }}{{ end }}
{{- include "weft.toml.table" (dict "path" "" "table" $top) }}
{{ end -}}

{{/* Client authentication flags of the coordinator (args). */}}
{{- define "weft.authArgs" -}}
{{- $auth := .Values.security.auth }}
{{- if $auth.passwordFile.existingSecret }}
- --password-file=/etc/weft/auth/passwords/{{ $auth.passwordFile.key }}
{{- end }}
{{- if $auth.jwt.existingSecret }}
{{- if $auth.jwt.jwks }}
- --jwt-jwks-file=/etc/weft/auth/jwt/{{ $auth.jwt.key }}
{{- else }}
- --jwt-key-file=/etc/weft/auth/jwt/{{ $auth.jwt.key }}
{{- end }}
{{- with $auth.jwt.issuer }}
- --jwt-issuer={{ . }}
{{- end }}
{{- with $auth.jwt.audience }}
- --jwt-audience={{ . }}
{{- end }}
- --jwt-user-claim={{ $auth.jwt.userClaim }}
{{- end }}
{{- with $auth.adminUsers }}
- --admin-user={{ join "," . }}
{{- end }}
{{- if .Values.security.insecure }}
- --insecure
{{- end }}
{{- if include "weft.accessRulesConfigMap" . }}
- --access-rules-file=/etc/weft/access/{{ .Values.security.accessRules.key }}
{{- end }}
{{- end -}}

{{/* The ConfigMap holding the access rules file: the operator's, the chart's, or none. */}}
{{- define "weft.accessRulesConfigMap" -}}
{{- $rules := .Values.security.accessRules -}}
{{- if $rules.existingConfigMap -}}
{{- $rules.existingConfigMap -}}
{{- else if $rules.rules -}}
{{- include "weft.componentName" (dict "ctx" . "component" "access-rules") -}}
{{- end -}}
{{- end -}}

{{/* Volumes (directories, so a changed Secret reaches the running pod) for the auth files. */}}
{{- define "weft.authVolumeMounts" -}}
{{- $auth := .Values.security.auth }}
{{- if $auth.passwordFile.existingSecret }}
- name: passwords
  mountPath: /etc/weft/auth/passwords
  readOnly: true
{{- end }}
{{- if $auth.jwt.existingSecret }}
- name: jwt
  mountPath: /etc/weft/auth/jwt
  readOnly: true
{{- end }}
{{- if include "weft.accessRulesConfigMap" . }}
- name: access-rules
  mountPath: /etc/weft/access
  readOnly: true
{{- end }}
{{- end -}}

{{- define "weft.authVolumes" -}}
{{- $auth := .Values.security.auth }}
{{- if $auth.passwordFile.existingSecret }}
- name: passwords
  secret:
    secretName: {{ $auth.passwordFile.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if $auth.jwt.existingSecret }}
- name: jwt
  secret:
    secretName: {{ $auth.jwt.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- with include "weft.accessRulesConfigMap" . }}
- name: access-rules
  configMap:
    name: {{ . }}
{{- end }}
{{- end -}}
